//! What a snapshot's state file holds, and how the KVM parts of it are read from and written to
//! KVM: every vCPU's registers and the VM's interrupt controllers, timer and clock. The device
//! parts come from the devices crate, the configuration from the VM's [`crate::config`].
//!
//! The order of the writes on restore follows what KVM needs (Firecracker's order): CPUID
//! before anything that depends on it, special registers (which hold the APIC base) before the
//! LAPIC, the LAPIC before the MSRs (the TSC-deadline MSR lives in it), the vCPU events (a
//! pending exception or interrupt) last.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use std::time::Instant;

use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::config::{DiskConfig, NetConfig};

/// The whole state file.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// What the VM was made of: the restore rebuilds it from this.
    pub config: SavedConfig,
    pub vm: KvmVmState,
    /// One per vCPU, in order (vCPU 0 first).
    pub vcpus: Vec<VcpuState>,
    pub serial: devices::serial::SerialState,
    /// One per virtio device, in slot order (disks first, then network interfaces, as
    /// `config` lists them).
    pub virtio: Vec<devices::virtio::mmio::MmioState>,
    /// The exit code the guest chose through its port, if it wrote one.
    pub guest_exit_code: Option<u8>,
}

/// The configuration a snapshot was taken with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub memory_mib: u64,
    pub cpus: u8,
    /// In guest order (vda first), opened again by their paths on restore.
    pub disks: Vec<DiskConfig>,
    /// In guest order (eth0 first), opened again by their names on restore; each with the
    /// MAC the guest saw (given or derived), so the guest's driver sees the same one.
    pub nets: Vec<NetConfig>,
}

/// The VM-wide in-kernel devices.
#[derive(Serialize, Deserialize)]
pub struct KvmVmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    /// kvmclock: the guest's clock continues from this value (see [`restore_clock`]).
    pub clock: kvm_clock_data,
    /// How long after vCPU 0's TSC was read the clock was (ns): the restore keeps the guest's
    /// TSC and kvmclock this far apart, as they were.
    pub clock_read_after_tsc_ns: u64,
}

/// One vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest was given; restored as is, after checking this host has it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST` that KVM could read on this vCPU: (index, value).
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The FPU, SSE and AVX state (the 4 KiB `KVM_GET_XSAVE` area).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// The guest's TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// Why a host with AMX state cannot take or restore a snapshot.
pub const XSAVE_TOO_LARGE: &str =
    "this host's XSAVE area is larger than 4 KiB (AMX), which snapshots do not carry yet";

/// A KVM call that failed while saving or restoring, and which one.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct KvmCallError {
    pub what: String,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn call<T>(what: &str, result: Result<T, kvm_ioctls::Error>) -> Result<T, KvmCallError> {
    result.map_err(|source| KvmCallError {
        what: what.to_string(),
        source,
    })
}

/// MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS` call (well below `KVM_MAX_MSR_ENTRIES`).
const MSR_CHUNK: usize = 64;

/// `(index, value)` pairs as the list `KVM_GET_MSRS`/`KVM_SET_MSRS` take; None if there are
/// more than `KVM_MAX_MSR_ENTRIES`.
pub fn msr_list(pairs: &[(u32, u64)]) -> Option<Msrs> {
    let entries: Vec<kvm_msr_entry> = pairs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).ok()
}

fn msr_entries(pairs: &[(u32, u64)]) -> Result<Msrs, KvmCallError> {
    msr_list(pairs).ok_or_else(|| KvmCallError {
        what: "building an MSR list".into(),
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

/// Reads every MSR of `indices` that KVM can read on `fd`: `KVM_GET_MSRS` stops at the first
/// it cannot, which is then left out (KVM lists MSRs whose feature this guest's CPUID lacks).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, KvmCallError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let pairs: Vec<(u32, u64)> = chunk.iter().map(|&i| (i, 0)).collect();
        let mut msrs = msr_entries(&pairs)?;
        let read = call("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // The one at `read`, if any, is unreadable: it is skipped.
        if let Some(&skipped) = chunk.get(read) {
            log::debug!("snapshot: MSR {skipped:#x} is not readable on this vCPU; left out");
            rest = &rest[read + 1..];
        } else {
            rest = &rest[read..];
        }
    }
    Ok(out)
}

/// Reads the state of a vCPU that is outside `KVM_RUN` (parked); `cpuid` is what it was given.
pub fn save_vcpu(
    fd: &VcpuFd,
    cpuid: &[kvm_cpuid_entry2],
    msr_indices: &[u32],
) -> Result<VcpuState, KvmCallError> {
    // Most of these are KVM's own snapshot of the vCPU; reading the MSRs last keeps the TSC
    // close to the rest.
    let mp_state = call("KVM_GET_MP_STATE", fd.get_mp_state())?;
    let regs = call("KVM_GET_REGS", fd.get_regs())?;
    let sregs = call("KVM_GET_SREGS", fd.get_sregs())?;
    let xsave = call("KVM_GET_XSAVE", fd.get_xsave())?;
    let xcrs = call("KVM_GET_XCRS", fd.get_xcrs())?;
    let debugregs = call("KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
    let lapic = call("KVM_GET_LAPIC", fd.get_lapic())?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let events = call("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
    let msrs = read_msrs(fd, msr_indices)?;
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        lapic,
        mp_state,
        events,
        debugregs,
        tsc_khz,
    })
}

/// Writes a saved state into a new vCPU that has not run.
///
/// `xsave_fits` must be true only where `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` is at most the
/// 4 KiB of `kvm_xsave` (no AMX state): then `KVM_SET_XSAVE` reads no more than that.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState, xsave_fits: bool) -> Result<(), String> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| {
        format!(
            "the snapshot has {} CPUID entries, too many",
            state.cpuid.len()
        )
    })?;
    let kvm = |e: KvmCallError| e.to_string();
    call("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid)).map_err(kvm)?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            // Without TSC scaling the guest's clock would run at this host's rate.
            call("KVM_SET_TSC_KHZ", fd.set_tsc_khz(khz)).map_err(|e| {
                format!(
                    "{e}: the snapshot's TSC runs at {khz} kHz and this host cannot scale to it"
                )
            })?;
        }
    }
    call("KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state)).map_err(kvm)?;
    call("KVM_SET_REGS", fd.set_regs(&state.regs)).map_err(kvm)?;
    call("KVM_SET_SREGS", fd.set_sregs(&state.sregs)).map_err(kvm)?;
    if !xsave_fits {
        return Err(XSAVE_TOO_LARGE.into());
    }
    // SAFETY: `xsave_fits` says KVM reads at most the 4 KiB `kvm_xsave` passed here.
    call("KVM_SET_XSAVE", unsafe { fd.set_xsave(&state.xsave) }).map_err(kvm)?;
    call("KVM_SET_XCRS", fd.set_xcrs(&state.xcrs)).map_err(kvm)?;
    call("KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debugregs)).map_err(kvm)?;
    call("KVM_SET_LAPIC", fd.set_lapic(&state.lapic)).map_err(kvm)?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = msr_entries(chunk).map_err(kvm)?;
        let set = call("KVM_SET_MSRS", fd.set_msrs(&msrs)).map_err(kvm)?;
        if let Some(&(index, value)) = chunk.get(set) {
            return Err(format!(
                "KVM refused the snapshot's MSR {index:#x} (value {value:#x}) on this host"
            ));
        }
    }
    call("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&state.events)).map_err(kvm)?;
    Ok(())
}

fn irqchip(chip_id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id,
        ..Default::default()
    }
}

/// Reads the VM's clock, interrupt controllers and PIT; `tsc_read_at` is when vCPU 0's TSC
/// was read.
pub fn save_vm(fd: &VmFd, tsc_read_at: Instant) -> Result<KvmVmState, KvmCallError> {
    let clock = call("KVM_GET_CLOCK", fd.get_clock())?;
    let clock_read_after_tsc_ns =
        u64::try_from(tsc_read_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut chips = [
        irqchip(KVM_IRQCHIP_PIC_MASTER),
        irqchip(KVM_IRQCHIP_PIC_SLAVE),
        irqchip(KVM_IRQCHIP_IOAPIC),
    ];
    for chip in &mut chips {
        call("KVM_GET_IRQCHIP", fd.get_irqchip(chip))?;
    }
    let [pic_master, pic_slave, ioapic] = chips;
    Ok(KvmVmState {
        pic_master,
        pic_slave,
        ioapic,
        pit: call("KVM_GET_PIT2", fd.get_pit2())?,
        clock,
        clock_read_after_tsc_ns,
    })
}

/// Writes the saved interrupt controllers and PIT into a new VM (its irqchip and PIT
/// created); the clock comes later ([`restore_clock`]).
pub fn restore_vm(fd: &VmFd, state: &KvmVmState) -> Result<(), String> {
    let chips = [
        (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
        (KVM_IRQCHIP_IOAPIC, &state.ioapic),
    ];
    for (id, chip) in chips {
        if chip.chip_id != id {
            return Err(format!(
                "the snapshot's interrupt controller {id} has chip id {}",
                chip.chip_id
            ));
        }
    }
    let kvm = |e: KvmCallError| e.to_string();
    call("KVM_SET_PIT2", fd.set_pit2(&state.pit)).map_err(kvm)?;
    for (_, chip) in chips {
        call("KVM_SET_IRQCHIP", fd.set_irqchip(chip)).map_err(kvm)?;
    }
    Ok(())
}

/// Sets kvmclock to the saved value with no flags: the guest's time goes on from the moment of
/// the snapshot, not from the wall-clock time of the restore (Firecracker does the same; the
/// guest's NTP or `hwclock` puts the wall clock right). `tsc_set_at` is when vCPU 0 got its
/// saved TSC: the clock is set so that the two stand as far apart as when they were saved
/// (a gap makes Linux's clocksource watchdog distrust the TSC: `Marking clocksource 'tsc'
/// as unstable because the skew is too large`; measured in the nested test host, the gap
/// was 17 ms with the clock set as saved, 7 ms in the other direction with it
/// corrected by the time between the two reads at save; TCG's timing varies by that much).
pub fn restore_clock(fd: &VmFd, saved: &KvmVmState, tsc_set_at: Instant) -> Result<(), String> {
    let since_tsc = u64::try_from(tsc_set_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // With KVM's master clock (a stable host TSC: `KVM_CLOCK_TSC_STABLE`), KVM_SET_CLOCK
    // sets the clock as of the master clock's last update, which writing the TSC made: the
    // clock then starts where the TSC did. Without it, the clock starts now, after the TSC.
    let master_clock = fd
        .get_clock()
        .is_ok_and(|c| c.flags & KVM_CLOCK_TSC_STABLE != 0);
    let value = saved
        .clock
        .clock
        .saturating_sub(saved.clock_read_after_tsc_ns)
        .saturating_add(if master_clock { 0 } else { since_tsc });
    let clock = kvm_clock_data {
        clock: value,
        ..Default::default()
    };
    call("KVM_SET_CLOCK", fd.set_clock(&clock)).map_err(|e| e.to_string())
}

/// CPUID bits the CPU itself changes as the guest runs (they mirror a control register), so a
/// running guest's CPUID may have them where the host's supported CPUID has not:
/// (leaf, subleaf, register, mask).
const DYNAMIC_CPUID_BITS: [(u32, u32, Register, u32); 3] = [
    (0x1, 0, Register::Ecx, 1 << 27), // OSXSAVE: CR4.OSXSAVE
    (0x1, 0, Register::Edx, 1 << 9),  // APIC: IA32_APIC_BASE.EN
    (0x7, 0, Register::Ecx, 1 << 4),  // OSPKE: CR4.PKE
];

/// The feature leaves compared on restore: (leaf, subleaf, registers).
const FEATURE_LEAVES: [(u32, u32, &[Register]); 6] = [
    (0x1, 0, &[Register::Ecx, Register::Edx]),
    (0x7, 0, &[Register::Ebx, Register::Ecx, Register::Edx]),
    (0x7, 1, &[Register::Eax]),
    (0xd, 1, &[Register::Eax]),
    (0x8000_0001, 0, &[Register::Ecx, Register::Edx]),
    (0x8000_0008, 0, &[Register::Ebx]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Register {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Register::Eax => e.eax,
            Register::Ebx => e.ebx,
            Register::Ecx => e.ecx,
            Register::Edx => e.edx,
        }
    }
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == subleaf)
        .or_else(|| entries.iter().find(|e| e.function == leaf && subleaf == 0))
}

/// Checks that this host offers every CPU feature the snapshot's guest was given: `saved` is
/// the guest's CPUID, `host` what this host would give the same vCPU. Each missing feature is
/// named by leaf, register and bits.
pub fn check_cpuid(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Result<(), String> {
    let mut missing = Vec::new();
    for (leaf, subleaf, registers) in FEATURE_LEAVES {
        let Some(guest) = find(saved, leaf, subleaf) else {
            continue;
        };
        let here = find(host, leaf, subleaf);
        for &reg in registers {
            let dynamic: u32 = DYNAMIC_CPUID_BITS
                .iter()
                .filter(|(l, s, r, _)| (*l, *s, *r) == (leaf, subleaf, reg))
                .map(|(.., mask)| mask)
                .sum();
            let lacking = reg.of(guest) & !here.map_or(0, |h| reg.of(h)) & !dynamic;
            if lacking != 0 {
                missing.push(format!(
                    "CPUID leaf {leaf:#x}.{subleaf} {reg:?} bits {lacking:#010x}"
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the snapshot's guest was given CPU features this host lacks: {}",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_host_with_the_same_or_more_features_passes() {
        let guest = [
            entry(0x1, 0, 0, 0x8000_0001, 0x1),
            entry(0x7, 0, 0x10, 0, 0),
        ];
        let host = [
            entry(0x1, 0, 0, 0x8000_0003, 0x3),
            entry(0x7, 0, 0x30, 0, 0),
        ];
        check_cpuid(&guest, &host).unwrap();
        check_cpuid(&guest, &guest).unwrap();
    }

    #[test]
    fn a_missing_feature_is_named() {
        let guest = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 1 << 5, 0, 0)];
        let host = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 0, 0, 0)];
        let err = check_cpuid(&guest, &host).unwrap_err();
        assert!(err.contains("leaf 0x7.0 Ebx bits 0x00000020"), "{err}");
        // A whole leaf the host lacks.
        let err = check_cpuid(&[entry(0x8000_0001, 0, 0, 1, 0)], &[]).unwrap_err();
        assert!(err.contains("0x80000001.0 Ecx"), "{err}");
    }

    #[test]
    fn bits_that_follow_control_registers_are_not_features() {
        let guest = [
            entry(0x1, 0, 0, 1 << 27, 1 << 9),
            entry(0x7, 0, 0, 1 << 4, 0),
        ];
        let host = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 0, 0, 0)];
        check_cpuid(&guest, &host).unwrap();
    }

    #[test]
    fn kvm_structures_round_trip_through_postcard() {
        let mut regs = kvm_regs {
            rip: 0x1234_5678,
            rflags: 2,
            ..Default::default()
        };
        regs.rax = u64::MAX;
        let bytes = postcard::to_stdvec(&regs).unwrap();
        let back: kvm_regs = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            (back.rip, back.rax, back.rflags),
            (0x1234_5678, u64::MAX, 2)
        );
        let config = SavedConfig {
            memory_mib: 128,
            cpus: 2,
            disks: vec![DiskConfig {
                path: "/tmp/a.img".into(),
                read_only: true,
                id: Some("x".into()),
            }],
            nets: vec![NetConfig {
                tap: "tap0".into(),
                mac: Some([0x52, 0x54, 0, 1, 2, 3]),
            }],
        };
        let bytes = postcard::to_stdvec(&config).unwrap();
        assert_eq!(postcard::from_bytes::<SavedConfig>(&bytes).unwrap(), config);
    }
}
