//! Why a VM could not be built or run, and the exit code each reason gets.

use std::io;
use std::path::PathBuf;

use boot::memory;

use crate::{api, snapshot, vcpu, vm};

/// Errors while building or running a VM. `exit_code()` tells usage errors (2) from runtime
/// errors (1).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--cpus {requested} is more than this host's KVM allows ({max})")]
    TooManyCpus { requested: u16, max: usize },
    #[error(
        "--cpus {requested} is more than the VMM supports ({max}: the MP table's 8-bit APIC ids)"
    )]
    TooManyCpusForMpTable { requested: u16, max: u8 },
    #[error("--memory {mib} MiB is more than this host has ({host_mib} MiB of RAM)")]
    MemoryTooLarge { mib: u64, host_mib: u64 },
    #[error("--memory {mib} MiB is too small")]
    MemoryTooSmall {
        mib: u64,
        #[source]
        source: memory::Error,
    },
    #[error("cannot open the kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the kernel {path}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: boot::Error,
    },
    #[error("cannot open the initrd {path}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the initrd {path}")]
    LoadInitrd {
        path: PathBuf,
        #[source]
        source: boot::Error,
    },
    #[error("cannot use the disk image {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: crate::disk::Error,
    },
    #[error("cannot attach the disk image {path}")]
    Block {
        path: PathBuf,
        #[source]
        source: devices::virtio::block::BlockError,
    },
    #[error("cannot use the TAP device {name} for --net")]
    Tap {
        name: String,
        #[source]
        source: devices::virtio::net::TapError,
    },
    #[error("cannot attach a virtio device")]
    Virtio(#[source] crate::device_manager::Error),
    #[error("the kernel command line is invalid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot create {mib} MiB of guest memory")]
    Memory {
        mib: u64,
        #[source]
        source: boot::Error,
    },
    #[error("cannot write the boot structures into guest memory")]
    BootStructures(#[source] boot::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot share a directory as virtio-fs tag {tag:?}")]
    Fs {
        tag: String,
        #[source]
        source: crate::virtiofsd::Error,
    },
    #[error("cannot start virtio-fs tag {tag:?} with its vhost-user back end")]
    FsDevice {
        tag: String,
        #[source]
        source: devices::virtio::fs::FsError,
    },
    #[error("cannot create the {kind} device")]
    CreateDevice {
        kind: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach {what} to the I/O bus")]
    Bus {
        what: &'static str,
        #[source]
        source: devices::BusError,
    },
    #[error("cannot connect the {what} interrupt (KVM irqfd for GSI {gsi})")]
    Irqfd {
        what: &'static str,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    Socket(#[from] api::SocketError),
    #[error("--vsock: cannot create the virtio-vsock device")]
    VsockDevice(#[source] std::io::Error),
    #[error(
        "--vsock cid={given}: the snapshot's guest has CID {saved}; leave cid= out with --restore"
    )]
    VsockCid { given: u64, saved: u64 },
    #[error("--vsock: the snapshot has no virtio-vsock device")]
    NoVsockInSnapshot,
    #[error(transparent)]
    Jail(#[from] crate::jail::Error),
    #[error("--restore: {0}")]
    RestoreOverride(String),
    #[error(
        "the disk {path} is {now} bytes, but was {saved} bytes when the snapshot was taken: it \
         is not the disk the snapshot's guest used (restore with that disk, unchanged)"
    )]
    DiskChanged { path: PathBuf, saved: u64, now: u64 },
    #[error(
        "the disk {path} is another file than when the snapshot was taken (it was replaced or \
         copied): restore with the snapshot's own disk, or name the copy with --drive path=… \
         to use it on purpose"
    )]
    DiskReplaced { path: PathBuf },
    #[error("cannot restore the snapshot")]
    Snapshot(#[from] snapshot::LoadError),
    #[error("cannot restore the VM's interrupt controllers, PIT and clock from the snapshot")]
    RestoreVm(#[source] vm::Error),
    #[error("cannot restore the serial port from the snapshot")]
    RestoreSerial(#[source] devices::serial::SerialStateError),
    #[error("cannot restore virtio device {index} from the snapshot")]
    RestoreVirtio {
        index: usize,
        #[source]
        source: devices::virtio::mmio::MmioRestoreError,
    },
    #[error("cannot restore vCPU {index} from the snapshot")]
    RestoreCpu {
        index: u8,
        #[source]
        source: crate::vcpu::state::StateError,
    },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
}

impl Error {
    /// 2 when the command line asks for something impossible (a value beyond the host's
    /// limits, a file that is not usable as asked), 1 when the VM fails at runtime.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::TooManyCpus { .. }
            | Error::TooManyCpusForMpTable { .. }
            | Error::MemoryTooLarge { .. }
            | Error::MemoryTooSmall { .. }
            | Error::OpenKernel { .. }
            | Error::LoadKernel { .. }
            | Error::OpenInitrd { .. }
            | Error::LoadInitrd { .. }
            | Error::Disk { .. }
            | Error::Block { .. }
            | Error::Tap { .. }
            | Error::Fs { .. }
            | Error::Socket(_)
            | Error::VsockCid { .. }
            | Error::NoVsockInSnapshot
            | Error::DiskChanged { .. }
            | Error::DiskReplaced { .. }
            | Error::RestoreOverride(_)
            | Error::Snapshot(_)
            | Error::RestoreVm(_)
            | Error::RestoreSerial(_)
            | Error::RestoreVirtio { .. }
            | Error::RestoreCpu { .. }
            | Error::Vcpu(vcpu::Error::Restore { .. })
            | Error::Cmdline(_)
            | Error::Jail(
                crate::jail::Error::Dir(..)
                | crate::jail::Error::NotRoot
                | crate::jail::Error::NotInside { .. },
            ) => 2,
            _ => 1,
        }
    }
}
