//! What a VM is made of, as the user asked for it: the CLI fills these in, [`crate::vmm::Vmm`]
//! builds and runs the VM they describe.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub cpus: u16,
    /// The virtio devices, in slot order: the disks (/dev/vda first), the network interfaces
    /// (eth0 first), then the others.
    pub devices: Vec<VirtioConfig>,
    /// The first disk is the root file system: `root=/dev/vda rw|ro` goes on the command line.
    pub root_disk: bool,
    pub kvm_path: PathBuf,
    /// Where to serve the control API (`--api-socket`).
    pub api_socket: Option<PathBuf>,
    /// Print the vCPU exit statistics on stderr when the VM ends (`--exit-stats`).
    pub exit_stats: bool,
    /// Run every thread under its seccomp filter (not `--no-seccomp`).
    pub seccomp: bool,
    /// Ask for transparent huge pages for guest RAM (not `--no-thp`).
    pub thp: bool,
    /// Shut vmm in once everything is open (`--jail DIR`).
    pub jail: Option<crate::jail::JailConfig>,
}

/// One virtio device. A snapshot saves the list a VM was made of, and the restore makes the
/// same devices again from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioConfig {
    /// A disk (`--rootfs`, `--drive`).
    Block(DiskConfig),
    /// A network interface on a TAP (`--net`).
    Net(NetConfig),
    /// A shared directory (`--fs`).
    Fs(FsConfig),
    /// The entropy device (on unless `--no-rng`).
    Rng,
    /// Sockets between host and guest (`--vsock`).
    Vsock(VsockConfig),
}

/// The virtio-vsock device (`--vsock cid=N,uds=PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's CID.
    pub cid: u64,
    /// The Unix socket host programs connect to; guest connections to host port P go to
    /// `PATH_P`.
    pub uds: PathBuf,
}

/// A directory shared with the guest through virtio-fs (`--fs tag=TAG,path=DIR[,ro]` or
/// `--fs tag=TAG,socket=PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    /// The mount tag the guest mounts it by (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    pub backend: FsBackend,
}

/// Who serves a shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsBackend {
    /// vmm starts virtiofsd for this directory, and stops it when it ends.
    Dir { path: PathBuf, read_only: bool },
    /// A vhost-user back end the user runs, listening on this socket.
    Socket(PathBuf),
}

/// One virtio-net interface on a TAP device (`--net tap=NAME[,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub tap: String,
    /// None: derived from the TAP's name, the same on every run.
    pub mac: Option<[u8; 6]>,
}

/// One virtio-blk disk (`--rootfs`, `--drive path=PATH[,ro][,id=ID]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: Option<String>,
}

/// A VM started from a snapshot (`--restore DIR`): what it is made of comes from the snapshot.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Keep the vCPUs parked until `PUT /vm/resume` (`--restore-paused`).
    pub paused: bool,
    pub kvm_path: PathBuf,
    pub api_socket: Option<PathBuf>,
    pub exit_stats: bool,
    pub seccomp: bool,
    /// `--vsock` with `--restore`: a new socket path for the snapshot's vsock device, and the
    /// CID if the user gave one (it must be the snapshot's).
    pub vsock: Option<(Option<u64>, PathBuf)>,
    /// `--drive` with `--restore`: new images for the snapshot's disks, in order (all of
    /// them, or none), each as large as the snapshot's was.
    pub disks: Vec<DiskConfig>,
    /// `--net` with `--restore`: new TAPs for the snapshot's interfaces, in order (all or none);
    /// each keeps the MAC the guest saw.
    pub nets: Vec<NetConfig>,
    /// Shut vmm in once the snapshot and everything it names is open (`--jail DIR`).
    pub jail: Option<crate::jail::JailConfig>,
}
