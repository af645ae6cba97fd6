//! A vCPU: registers, CPUID, MSRs, FPU and LAPIC set up for the kernel's entry (or restored
//! from a snapshot, [`state`]), one entry into the guest with its exit sent to the buses
//! ([`Vcpu::run_once`]), and the kick that stops it. The threads that run the vCPUs are in
//! [`crate::vcpus`]; pausing them is [`control`].
//!
//! Stopping a vCPU (Firecracker's design): the VMM records the stop reason first, then sends the
//! vCPU's thread one [`kick_signal`]. Its handler sets `immediate_exit` in that thread's
//! `kvm_run`, so `KVM_RUN` returns `EINTR` whether the signal came while the vCPU was in the
//! guest (the signal itself interrupts it) or just before the thread entered `KVM_RUN` again
//! (KVM sees `immediate_exit` and returns at once): one kick is always enough. A pause
//! ([`control::VcpuControl`]) uses the same kick.

pub mod control;
pub mod state;

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use boot::gdt::{self, Segment};
use boot::layout;
use boot::loader::EntryPoint;
use boot::paging::{EFER_LMA, EFER_LME, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
use devices::IoBuses;
use devices::Persist;
use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_run, kvm_segment, kvm_sregs, CpuId, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::exit_stats::{ExitKind, VcpuExitStats};
use crate::stop::StopReason;
use crate::vm::Vm;
use state::{StateError, VcpuState};

/// CR0 bit 4, extension type: always 1 on processors since the i486 (Intel SDM Vol. 3A, 2.5).
const X86_CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

// MSRs written at reset (Intel SDM Vol. 4).
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// MISC_ENABLE bit 0: fast string operations.
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

// Local APIC register offsets and LVT delivery modes (Intel SDM Vol. 3A, 10.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// FPU control word and MXCSR values at reset (Intel SDM Vol. 1, 8.1.5 and 10.2.3.1).
const FPU_FCW_RESET: u16 = 0x37f;
const MXCSR_RESET: u32 = 0x1f80;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {index}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot configure vCPU {index} ({what})")]
    Configure {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of the {wanted} boot MSRs on vCPU {index} (first refused: {refused:#x})")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
        refused: u32,
    },
    #[error("cannot build the MSR list")]
    MsrList,
    #[error("the thread of vCPU {index} ended before it was configured")]
    Thread { index: u8 },
    #[error("cannot restore vCPU {index} from the snapshot")]
    Restore {
        index: u8,
        #[source]
        source: StateError,
    },
    #[error("vCPU {index}: cannot install its seccomp filter")]
    Seccomp {
        index: u8,
        #[source]
        source: crate::seccomp::Error,
    },
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, for the kick handler; null while the
    /// thread runs none. Constant-initialised and without a destructor, so reading it in a
    /// signal handler allocates nothing.
    static THIS_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = THIS_KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: a non-null pointer is the `kvm_run` mapping of the vCPU this very thread is
        // running (set in `Vcpu::run`, cleared before that vCPU's descriptor is closed), and the
        // handler runs on this thread. KVM reads the field on each entry; a volatile write of
        // one byte is what the KVM API asks of user space here.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread that has not been joined yet (VcpuControl hands out
    // threads only until `stop`, which runs before the join), so its pthread_t is valid; the
    // signal's handler is installed before any vCPU thread starts.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        log::warn!(
            "cannot kick a vCPU thread: {}",
            io::Error::from_raw_os_error(rc)
        );
    }
}

/// Installs the kick handler (once, before any vCPU thread starts).
pub fn register_kick_handler() -> io::Result<()> {
    register_signal_handler(kick_signal(), on_kick).map_err(io::Error::from)
}

/// Publishes a vCPU's `kvm_run` to this thread's kick handler while alive.
pub struct KickTarget;

impl KickTarget {
    fn set(run: &mut kvm_run) -> Self {
        THIS_KVM_RUN.with(|cell| cell.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        THIS_KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// A vCPU.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    /// The CPUID this vCPU was given (a snapshot saves it: on some hosts `KVM_GET_CPUID2`
    /// does not return what `KVM_SET_CPUID2` set).
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// The MSRs a snapshot reads ([`Vm::msr_indices`]).
    msr_indices: Arc<[u32]>,
    /// Whether this host's XSAVE area fits a snapshot's ([`Vm::xsave_fits`]).
    xsave_fits: bool,
}

fn kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
        padding: 0,
    }
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, Error> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| Error::Create { index, source })?;
        Ok(Vcpu {
            index,
            fd,
            cpuid: Vec::new(),
            msr_indices: vm.msr_indices.clone(),
            xsave_fits: vm.xsave_fits,
        })
    }

    fn configure_err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
        let index = self.index;
        move |source| Error::Configure {
            index,
            what,
            source,
        }
    }

    /// Sets CPUID, MSRs, FPU and LAPIC on every vCPU; the boot processor (index 0) also gets
    /// the registers for the kernel's entry. Application processors wait in the in-kernel
    /// LAPIC for the guest's INIT/SIPI.
    pub fn configure(&mut self, cpuid: &CpuId, entry: Option<EntryPoint>) -> Result<(), Error> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.configure_err("KVM_SET_CPUID2"))?;
        self.cpuid = cpuid.as_slice().to_vec();
        self.set_msrs()?;
        let fpu = kvm_fpu {
            fcw: FPU_FCW_RESET,
            mxcsr: MXCSR_RESET,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(self.configure_err("KVM_SET_FPU"))?;
        self.set_lint()?;
        if let Some(entry) = entry {
            self.set_boot_registers(entry)?;
        }
        Ok(())
    }

    fn set_msrs(&self) -> Result<(), Error> {
        let entries = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
        ];
        let msrs = state::msr_list(&entries).ok_or(Error::MsrList)?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.configure_err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                wanted: entries.len(),
                refused: entries[set].0,
            });
        }
        Ok(())
    }

    /// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as the MP table says.
    fn set_lint(&self) -> Result<(), Error> {
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.configure_err("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = u32::from_le_bytes(bytes);
            // Delivery mode is bits 10:8.
            let value = (value & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(self.configure_err("KVM_SET_LAPIC"))
    }

    fn set_boot_registers(&self, entry: EntryPoint) -> Result<(), Error> {
        let mut sregs: kvm_sregs = self
            .fd
            .get_sregs()
            .map_err(self.configure_err("KVM_GET_SREGS"))?;
        // The selectors are constants that index BOOT_GDT (checked by the boot crate's tests).
        let seg = |selector: u16| {
            let segment = gdt::boot_segment((selector >> 3) as u8);
            kvm_segment(&segment.expect("a boot GDT selector"))
        };
        sregs.gdt.base = layout::BOOT_GDT_START.0;
        sregs.gdt.limit = (std::mem::size_of_val(&gdt::BOOT_GDT) - 1) as u16;
        sregs.idt.base = layout::BOOT_IDT_START.0;
        sregs.idt.limit = 7;
        let data = seg(gdt::DATA_SELECTOR);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = seg(gdt::TSS_SELECTOR);
        let mut regs = kvm_regs {
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        match entry {
            EntryPoint::Long64(rip) => {
                // 64-bit boot protocol: long mode, identity paging, %rsi = zero page.
                sregs.cs = seg(gdt::CODE64_SELECTOR);
                sregs.cr3 = layout::PML4_START.0;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
                regs.rip = rip.0;
                regs.rsi = layout::ZERO_PAGE_START.0;
                regs.rsp = layout::BOOT_STACK_POINTER.0;
                regs.rbp = layout::BOOT_STACK_POINTER.0;
            }
            EntryPoint::Pvh(rip) => {
                // PVH boot ABI: 32-bit protected mode, paging off, %ebx = hvm_start_info.
                sregs.cs = seg(gdt::CODE32_SELECTOR);
                sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rip = rip.0;
                regs.rbx = layout::PVH_INFO_START.0;
            }
        }
        self.fd
            .set_sregs(&sregs)
            .map_err(self.configure_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs)
            .map_err(self.configure_err("KVM_SET_REGS"))
    }

    /// Publishes this vCPU's `kvm_run` to the kick handler of the calling thread, until the
    /// guard drops (before the vCPU: declare the guard after it).
    pub fn publish_for_kicks(&mut self) -> KickTarget {
        KickTarget::set(self.fd.get_kvm_run())
    }

    /// Enters the guest once and handles the exit that ends the entry: port and MMIO accesses
    /// go to the buses, a kick clears `immediate_exit`. Returns why the VM must stop, when the
    /// exit says so (a triple fault, an emulation failure, …). Every exit is counted in
    /// `stats`.
    pub fn run_once(
        &mut self,
        io: &IoBuses,
        mem: &GuestMemoryMmap,
        stats: &VcpuExitStats,
    ) -> Option<StopReason> {
        let cpu = self.index;
        let reason = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let start = Instant::now();
                let device = io.pio.write(u64::from(port), data);
                stats.count_access(ExitKind::IoOut, device, start.elapsed());
                return None;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let start = Instant::now();
                let device = io.pio.read_or_ff(u64::from(port), data);
                stats.count_access(ExitKind::IoIn, device, start.elapsed());
                return None;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let start = Instant::now();
                let device = io.mmio.write(addr, data);
                stats.count_access(ExitKind::MmioWrite, device, start.elapsed());
                return None;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let start = Instant::now();
                let device = io.mmio.read_or_ff(addr, data);
                stats.count_access(ExitKind::MmioRead, device, start.elapsed());
                return None;
            }
            Ok(VcpuExit::Shutdown) => {
                stats.count(ExitKind::Shutdown);
                // A reset for guests that reboot this way (Linux's `reboot=t`), and the
                // only trace of a fatal fault for the others: say where it happened.
                log::warn!(
                    "vCPU {cpu} triple-faulted (KVM_EXIT_SHUTDOWN) at {}",
                    self.where_and_bytes(mem)
                );
                StopReason::TripleFault { cpu }
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                stats.count(ExitKind::SystemEvent);
                StopReason::SystemEvent { cpu, kind }
            }
            Ok(VcpuExit::Hlt) => {
                stats.count(ExitKind::Hlt);
                // With the in-kernel LAPIC, KVM handles HLT itself; an HLT exit means
                // the guest halted for good.
                StopReason::Error(format!("vCPU {cpu} halted (KVM_EXIT_HLT)"))
            }
            Ok(VcpuExit::InternalError) => {
                stats.count(ExitKind::InternalError);
                self.internal_error(mem)
            }
            Ok(VcpuExit::FailEntry(hw_reason, _)) => {
                stats.count(ExitKind::FailEntry);
                StopReason::Error(format!(
                    "vCPU {cpu}: KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {hw_reason:#x}) at {}{}",
                    self.where_and_bytes(mem),
                    pvm_hint()
                ))
            }
            Ok(other) => {
                stats.count(ExitKind::Other);
                let what = format!("{other:?}");
                StopReason::Error(format!(
                    "vCPU {cpu}: unexpected KVM exit {what} at {}",
                    self.where_and_bytes(mem)
                ))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick (or another signal): clear the kick's flag and look at `stopping`
                // and the pause request.
                stats.count(ExitKind::Interrupted);
                self.fd.set_kvm_immediate_exit(0);
                return None;
            }
            Err(e) => StopReason::Error(format!("vCPU {cpu}: KVM_RUN failed: {e}")),
        };
        Some(reason)
    }

    /// Tells KVM this vCPU is paused (`KVM_KVMCLOCK_CTRL`), so that the guest's soft-lockup
    /// watchdog does not count the pause against it. EINVAL: the guest set up no kvmclock.
    pub fn tell_kvm_paused(&self) {
        match self.fd.kvmclock_ctrl() {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EINVAL => {}
            Err(e) => log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL failed: {e}", self.index),
        }
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> StopReason {
        let cpu = self.index;
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit-information union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let (suberror, ndata) = (internal.suberror, internal.ndata as usize);
        let data = &internal.data[..ndata.min(internal.data.len())];
        // With KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[0] holds the flags
        // and the next 16 bytes are `u8 insn_size; u8 insn_bytes[15]` (struct
        // kvm_run.emulation_failure, Documentation/virt/kvm/api.rst).
        let kvm_bytes = (suberror == KVM_INTERNAL_ERROR_EMULATION
            && data.len() >= 3
            && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0)
            .then(|| {
                let raw: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
                let len = usize::from(raw[0]).min(raw.len() - 1);
                raw[1..=len].to_vec()
            });
        let what = match suberror {
            KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
            kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown",
        };
        let location = match kvm_bytes {
            Some(bytes) if !bytes.is_empty() => {
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                format!("RIP {rip:#x}, instruction bytes {}", hex(&bytes))
            }
            _ => self.where_and_bytes(mem),
        };
        StopReason::Error(format!(
            "vCPU {cpu}: KVM_EXIT_INTERNAL_ERROR, suberror {suberror} ({what}), at {location}{}",
            pvm_hint()
        ))
    }

    /// "RIP 0x…, instruction bytes …", reading the bytes from guest memory through the
    /// vCPU's own address translation.
    fn where_and_bytes(&self, mem: &GuestMemoryMmap) -> String {
        let Ok(regs) = self.fd.get_regs() else {
            return "an unknown RIP (KVM_GET_REGS failed)".to_string();
        };
        let linear = self
            .fd
            .get_sregs()
            .map(|s| s.cs.base.wrapping_add(regs.rip))
            .unwrap_or(regs.rip);
        let bytes = self
            .fd
            .translate_gva(linear)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut buf = [0u8; 16];
                mem.read_slice(&mut buf, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| buf)
            });
        match bytes {
            Some(b) => format!("RIP {:#x}, instruction bytes {}", regs.rip, hex(&b)),
            None => format!(
                "RIP {:#x} (instruction bytes unavailable: address not in guest memory)",
                regs.rip
            ),
        }
    }
}

/// A vCPU's registers, MSRs, FPU, LAPIC and pending events ([`state`]). Saved on the vCPU's
/// own thread while it is parked; restored into a new vCPU before it first runs.
impl Persist for Vcpu {
    type State = VcpuState;
    type Error = StateError;

    fn save(&self) -> Result<VcpuState, StateError> {
        state::save(&self.fd, &self.cpuid, &self.msr_indices)
    }

    fn restore(&mut self, saved: &VcpuState) -> Result<(), StateError> {
        state::restore(&self.fd, saved, self.xsave_fits)?;
        self.cpuid = saved.cpuid.clone();
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where `/sys/module/kvm_pvm` exists, KVM is a software nested hypervisor.
const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// On hosts whose KVM is PVM, explains that the host emulates guest kernel code.
fn pvm_hint() -> &'static str {
    if std::path::Path::new(KVM_PVM_MODULE).exists() {
        "\nnote: this host's KVM is PVM (/sys/module/kvm_pvm exists): it emulates guest kernel \
         code instruction by instruction and does not implement every instruction, so a stock \
         kernel stops in early boot here; run on a host with hardware virtualization (VT-x/AMD-V)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_formats_bytes() {
        assert_eq!(hex(&[0xcc, 0x0f, 0x0b]), "cc 0f 0b");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn segments_convert_field_by_field() {
        let s = gdt::segment_from_entry(gdt::BOOT_GDT[1], 1);
        let k = kvm_segment(&s);
        assert_eq!(k.selector, 0x08);
        assert_eq!(k.l, 1);
        assert_eq!(k.present, 1);
        assert_eq!(k.limit, 0xffff_ffff);
    }
}
