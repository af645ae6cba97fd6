//! The KVM VM: `/dev/kvm`, the capabilities the VMM relies on, the in-kernel interrupt
//! controllers and PIT, and guest memory registered as KVM memory slots.

use std::io;
use std::path::{Path, PathBuf};

use boot::layout;
use kvm_bindings::KVM_PIT_SPEAKER_DUMMY;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
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
}

/// An open KVM VM with its in-kernel IOAPIC/PIC/LAPICs and PIT.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    /// The most vCPUs this host's KVM lets one VM have (`KVM_CAP_MAX_VCPUS`).
    pub max_vcpus: usize,
    /// The CPUID that KVM can present to guests (with the TSC-deadline timer where KVM has
    /// it, see [`crate::cpuid::enable_tsc_deadline`]), before per-vCPU normalisation.
    pub supported_cpuid: CpuId,
}

/// Opens a KVM device node, turning the common failures into messages that say what to do.
fn open_kvm(path: &Path) -> Result<Kvm, Error> {
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
    pub fn new(kvm_path: &Path, mem: &GuestMemoryMmap) -> Result<Self, Error> {
        let kvm = open_kvm(kvm_path)?;
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
        Ok(Vm {
            kvm,
            fd,
            max_vcpus,
            supported_cpuid,
        })
    }
}
