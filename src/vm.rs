//! The KVM VM: `/dev/kvm`, the capabilities the VMM relies on, the in-kernel interrupt
//! controllers and PIT, guest memory registered as KVM memory slots, and the VM-wide state a
//! snapshot carries ([`VmState`]: interrupt controllers, PIT, clock).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use boot::layout;
use devices::Persist;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The only KVM API version there has ever been (`KVM_GET_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// The KVM capabilities the VMM relies on, with the names a user can look up.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
];

/// Errors while opening KVM and creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0} does not exist: this host has no KVM (load the kvm_intel or kvm_amd module, \
         or enable nested virtualization for this VM)"
    )]
    NoKvm(PathBuf),
    #[error("no permission to open {0}: add your user to the 'kvm' group or run as root")]
    KvmPermission(PathBuf),
    #[error("cannot open {path}")]
    OpenKvm {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("KVM API version {0} is not supported (the VMM needs version {KVM_API_VERSION})")]
    ApiVersion(i32),
    #[error("this host's KVM lacks {0}, which the VMM needs")]
    MissingCapability(&'static str),
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register guest memory at {addr:#x} ({size} bytes) with KVM")]
    MemorySlot {
        addr: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the VM has {count} memory regions but KVM offers only {max} memory slots")]
    TooManySlots { count: usize, max: usize },
    #[error("{what} failed")]
    State {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the snapshot's interrupt controller {id} has chip id {found}")]
    ChipId { id: u32, found: u32 },
}

/// The largest XSAVE area a snapshot carries: `struct kvm_xsave`, what `KVM_GET_XSAVE` fills
/// (`KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` says how large this host's is).
pub const XSAVE_LEN: i32 = 4096;

/// An open KVM VM with its in-kernel IOAPIC/PIC/LAPICs and PIT.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    /// The most vCPUs this host's KVM lets one VM have (`KVM_CAP_MAX_VCPUS`).
    pub max_vcpus: usize,
    /// The CPUID that KVM can present to guests (with the TSC-deadline timer where KVM has
    /// it, see [`crate::cpuid::enable_tsc_deadline`]), before per-vCPU normalisation.
    pub supported_cpuid: CpuId,
    /// The MSRs KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`), which a snapshot reads.
    pub msr_indices: Arc<[u32]>,
    /// Whether this host's XSAVE area fits the 4 KiB a snapshot carries (no AMX state).
    pub xsave_fits: bool,
}

/// The VM-wide in-kernel devices, for a snapshot.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    /// kvmclock: the guest's clock continues from this value (see [`Vm::restore_clock`]).
    pub clock: kvm_clock_data,
    /// How long after vCPU 0's TSC was read the clock was (ns): the restore keeps the guest's
    /// TSC and kvmclock this far apart, as they were. [`Vm::save`](Persist::save) reads the
    /// clock last; whoever read the TSC fills this in right after.
    pub clock_read_after_tsc_ns: u64,
}

fn irqchip(chip_id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id,
        ..Default::default()
    }
}

fn call<T>(what: &'static str, result: Result<T, kvm_ioctls::Error>) -> Result<T, Error> {
    result.map_err(|source| Error::State { what, source })
}

/// Reads the interrupt controllers and the PIT, then the clock; writes the interrupt
/// controllers and the PIT into a new VM (its irqchip and PIT created). The clock is set
/// apart, once the vCPUs have their TSCs ([`Vm::restore_clock`]).
impl Persist for Vm {
    type State = VmState;
    type Error = Error;

    fn save(&self) -> Result<VmState, Error> {
        let mut chips = [
            irqchip(KVM_IRQCHIP_PIC_MASTER),
            irqchip(KVM_IRQCHIP_PIC_SLAVE),
            irqchip(KVM_IRQCHIP_IOAPIC),
        ];
        for chip in &mut chips {
            call("KVM_GET_IRQCHIP", self.fd.get_irqchip(chip))?;
        }
        let [pic_master, pic_slave, ioapic] = chips;
        let pit = call("KVM_GET_PIT2", self.fd.get_pit2())?;
        let clock = call("KVM_GET_CLOCK", self.fd.get_clock())?;
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit,
            clock,
            clock_read_after_tsc_ns: 0,
        })
    }

    fn restore(&mut self, state: &VmState) -> Result<(), Error> {
        let chips = [
            (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
            (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
            (KVM_IRQCHIP_IOAPIC, &state.ioapic),
        ];
        for (id, chip) in chips {
            if chip.chip_id != id {
                return Err(Error::ChipId {
                    id,
                    found: chip.chip_id,
                });
            }
        }
        call("KVM_SET_PIT2", self.fd.set_pit2(&state.pit))?;
        for (_, chip) in chips {
            call("KVM_SET_IRQCHIP", self.fd.set_irqchip(chip))?;
        }
        Ok(())
    }
}

/// Opens a KVM device node, turning the common failures into messages that say what to do.
pub fn open_kvm(path: &Path) -> Result<Kvm, Error> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::OpenKvm {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        }
    })?;
    Kvm::new_with_path(&c_path).map_err(|e| {
        let source = io::Error::from_raw_os_error(e.errno());
        match source.kind() {
            io::ErrorKind::NotFound => Error::NoKvm(path.to_path_buf()),
            io::ErrorKind::PermissionDenied => Error::KvmPermission(path.to_path_buf()),
            _ => Error::OpenKvm {
                path: path.to_path_buf(),
                source,
            },
        }
    })
}

/// Registers every region of `mem` as a KVM memory slot of `vm`, in order.
fn register_memory(kvm: &Kvm, vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    let max = kvm.get_nr_memslots();
    if mem.num_regions() > max {
        return Err(Error::TooManySlots {
            count: mem.num_regions(),
            max,
        });
    }
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`, which
        // the caller of `Vm::new` keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(|source| Error::MemorySlot {
            addr: region.start_addr().0,
            size: region.len(),
            source,
        })?;
    }
    Ok(())
}

impl Vm {
    /// Opens `kvm_path`, checks the API version and capabilities, and creates a VM with the
    /// in-kernel irqchip and PIT, with `mem` as its RAM (the caller keeps `mem` alive for as
    /// long as the VM exists: the VMM holds it until every vCPU has stopped).
    pub fn new(kvm: Kvm, mem: &GuestMemoryMmap) -> Result<Self, Error> {
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        let mut supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(|source| Error::Setup {
                    what: "KVM_GET_SUPPORTED_CPUID",
                    source,
                })?;
        if kvm.check_extension(Cap::TscDeadlineTimer) {
            crate::cpuid::enable_tsc_deadline(&mut supported_cpuid);
        }
        crate::timeline::mark("KVM opened, API and capabilities checked");
        let fd = kvm.create_vm().map_err(Error::CreateVm)?;
        crate::timeline::mark("VM created (KVM_CREATE_VM)");
        // Guest memory goes in before the in-kernel irqchip: KVM_SET_USER_MEMORY_REGION takes
        // about 0.1 ms on a VM without one, and 6-10 ms once KVM_CREATE_IRQCHIP has run
        // (measured on these hosts; Cloud Hypervisor registers memory first too).
        register_memory(&kvm, &fd, mem)?;
        crate::timeline::mark("guest memory registered");
        fd.set_tss_address(layout::KVM_TSS_START.0 as usize)
            .map_err(|source| Error::Setup {
                what: "KVM_SET_TSS_ADDR",
                source,
            })?;
        fd.create_irq_chip().map_err(|source| Error::Setup {
            what: "KVM_CREATE_IRQCHIP",
            source,
        })?;
        // The PIT's speaker port (0x61) is answered in the kernel too.
        let pit_config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit_config).map_err(|source| Error::Setup {
            what: "KVM_CREATE_PIT2",
            source,
        })?;
        crate::timeline::mark("irqchip and PIT created");
        let msr_indices = call("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?
            .as_slice()
            .into();
        let xsave_fits = kvm.check_extension_int(Cap::Xsave2) <= XSAVE_LEN;
        Ok(Vm {
            kvm,
            fd,
            max_vcpus,
            supported_cpuid,
            msr_indices,
            xsave_fits,
        })
    }
}

impl Vm {
    /// Sets kvmclock to the saved value with no flags: the guest's time goes on from the
    /// moment of the snapshot, not from the wall-clock time of the restore (Firecracker does
    /// the same; the guest's NTP or `hwclock` puts the wall clock right). `tsc_set_at` is when
    /// vCPU 0 got its saved TSC: the clock is set so that the two stand as far apart as when
    /// they were saved (a gap makes Linux's clocksource watchdog distrust the TSC: `Marking
    /// clocksource 'tsc' as unstable because the skew is too large`; measured in the nested
    /// test host, the gap was 17 ms with the clock set as saved, 7 ms in the other direction
    /// with it corrected by the time between the two reads at save; TCG's timing varies by
    /// that much).
    pub fn restore_clock(&self, saved: &VmState, tsc_set_at: Instant) -> Result<(), Error> {
        let since_tsc = u64::try_from(tsc_set_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // With KVM's master clock (a stable host TSC: `KVM_CLOCK_TSC_STABLE`), KVM_SET_CLOCK
        // sets the clock as of the master clock's last update, which writing the TSC made: the
        // clock then starts where the TSC did. Without it, the clock starts now, after the TSC.
        let master_clock = self
            .fd
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
        call("KVM_SET_CLOCK", self.fd.set_clock(&clock))
    }
}
