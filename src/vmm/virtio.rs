//! The VM's virtio devices, made from the configuration's list ([`VirtioConfig`]) in slot
//! order, in two steps: [`open`] opens every file they need before KVM is touched (so a bad
//! path or TAP is reported as such on any host), [`attach`] makes each device and attaches it
//! to the MMIO bus and KVM. A new kind of device is a variant of `VirtioConfig` and an arm in
//! each of the two.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use devices::virtio::fs::Fs;
use devices::virtio::net::{format_mac, generated_mac, Tap};
use devices::virtio::vsock::Vsock;
use devices::virtio::{Block, MmioTransport, Net, QueueHandler, Rng, VirtioDevice};
use devices::Bus;
use vm_memory::GuestMemoryMmap;

use super::error::Error;
use crate::api::socket::{self, SocketFile};
use crate::api::DeviceInfo;
use crate::config::{DiskConfig, FsBackend, FsConfig, NetConfig, VirtioConfig, VsockConfig};
use crate::device_manager::{DeviceManager, MmioSlot, MAX_VIRTIO_DEVICES};
use crate::stop::{StopReason, VmStop};
use crate::virtiofsd::{self, Virtiofsd};
use crate::vm::Vm;

/// A virtio device's configuration with what it needs from the host, opened.
pub(super) enum Opened {
    /// The disk image, locked as it is shared or not.
    Block(DiskConfig, File),
    /// The TAP; the configuration has its MAC decided (given, or derived from the TAP's name).
    Net(NetConfig, Tap),
    /// The connection to the vhost-user back end, and the virtiofsd vmm started, if it did.
    Fs(FsConfig, UnixStream, Option<Virtiofsd>),
    Rng,
    /// The listening socket host programs connect to, and its file (removed when dropped);
    /// whether the device replaces one from a snapshot.
    Vsock(VsockConfig, UnixListener, SocketFile, bool),
}

/// What vmm made for its devices, undone when dropped: a virtiofsd it started is stopped, a
/// socket file it created is removed.
pub(super) enum Helper {
    Virtiofsd(#[allow(dead_code, reason = "held only to be dropped")] Virtiofsd),
    SocketFile(#[allow(dead_code, reason = "held only to be dropped")] SocketFile),
}

/// For `--jail`: where each vsock device's socket (given as a host path inside DIR) is from
/// inside the jail, in device order. Worked out before anything is opened: a path outside DIR
/// is a usage error.
pub(super) fn jail_paths(
    configs: &[VirtioConfig],
    jail: &crate::jail::JailConfig,
) -> Result<Vec<std::path::PathBuf>, Error> {
    let mut paths = Vec::new();
    for config in configs {
        if let VirtioConfig::Vsock(vsock) = config {
            paths.push(crate::jail::inside(jail, "--vsock uds", &vsock.uds)?);
        }
    }
    Ok(paths)
}

/// Once vmm is jailed: each vsock device knows its socket by its path inside ([`jail_paths`]),
/// for `PATH_P` and the file's removal.
pub(super) fn move_into_jail(opened: &mut [Opened], paths: Vec<std::path::PathBuf>) {
    let sockets = opened.iter_mut().filter_map(|device| match device {
        Opened::Vsock(vsock, _, file, _) => Some((vsock, file)),
        _ => None,
    });
    for ((vsock, file), inside) in sockets.zip(paths) {
        file.set_path(inside.clone());
        vsock.uds = inside;
    }
}

impl Opened {
    /// The configuration, as a snapshot saves it.
    pub fn config(&self) -> VirtioConfig {
        match self {
            Opened::Block(disk, _) => VirtioConfig::Block(disk.clone()),
            Opened::Net(net, _) => VirtioConfig::Net(net.clone()),
            Opened::Fs(fs, ..) => VirtioConfig::Fs(fs.clone()),
            Opened::Rng => VirtioConfig::Rng,
            Opened::Vsock(vsock, ..) => VirtioConfig::Vsock(vsock.clone()),
        }
    }
}

/// Opens what each device of `configs` needs, in order; `restoring`: the devices replace those
/// of a snapshot.
pub(super) fn open(configs: &[VirtioConfig], restoring: bool) -> Result<Vec<Opened>, Error> {
    if configs.len() > MAX_VIRTIO_DEVICES {
        return Err(Error::Virtio(crate::device_manager::Error::TooManyDevices));
    }
    configs
        .iter()
        .map(|config| match config {
            VirtioConfig::Block(disk) => crate::disk::open_disk(&disk.path, disk.read_only)
                .map(|file| Opened::Block(disk.clone(), file))
                .map_err(|source| Error::Disk {
                    path: disk.path.clone(),
                    source,
                }),
            VirtioConfig::Net(net) => {
                let tap = Tap::open(&net.tap).map_err(|source| Error::Tap {
                    name: net.tap.clone(),
                    source,
                })?;
                let mac = net.mac.unwrap_or_else(|| generated_mac(tap.name()));
                let net = NetConfig {
                    tap: net.tap.clone(),
                    mac: Some(mac),
                };
                Ok(Opened::Net(net, tap))
            }
            VirtioConfig::Fs(fs) => {
                let fs_err = |source| Error::Fs {
                    tag: fs.tag.clone(),
                    source,
                };
                match &fs.backend {
                    FsBackend::Dir { path, read_only } => virtiofsd::start(path, *read_only)
                        .map(|(helper, stream)| Opened::Fs(fs.clone(), stream, Some(helper)))
                        .map_err(fs_err),
                    FsBackend::Socket(path) => virtiofsd::connect(path)
                        .map(|stream| Opened::Fs(fs.clone(), stream, None))
                        .map_err(fs_err),
                }
            }
            VirtioConfig::Rng => Ok(Opened::Rng),
            VirtioConfig::Vsock(vsock) => {
                raise_fd_limit();
                let (listener, file) = socket::bind("--vsock uds", &vsock.uds)?;
                Ok(Opened::Vsock(vsock.clone(), listener, file, restoring))
            }
        })
        .collect()
}

/// A restore's disks are the snapshot's (`saved`, in device order): each is as large as it was
/// then and, unless `overridden` (`--drive` gave other files), the very file it was (device and
/// inode). A disk that grew, shrank or was replaced by another file is refused (exit code 2):
/// the restored guest's page cache and file systems describe the old one.
pub(super) fn check_disks(
    opened: &[Opened],
    saved: &[crate::snapshot::state::DiskIdentity],
    overridden: bool,
) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let disks = opened.iter().filter_map(|device| match device {
        Opened::Block(disk, file) => Some((disk, file)),
        _ => None,
    });
    let mut count = 0;
    for ((disk, file), saved) in disks.zip(saved) {
        count += 1;
        let meta = file.metadata().map_err(|source| Error::Disk {
            path: disk.path.clone(),
            source: crate::disk::Error::Open(source),
        })?;
        if meta.len() != saved.size {
            return Err(Error::DiskChanged {
                path: disk.path.clone(),
                saved: saved.size,
                now: meta.len(),
            });
        }
        if !overridden && (meta.dev(), meta.ino()) != (saved.dev, saved.ino) {
            return Err(Error::DiskReplaced {
                path: disk.path.clone(),
            });
        }
    }
    if count != saved.len() {
        return Err(Error::Snapshot(crate::snapshot::LoadError::Inconsistent {
            path: std::path::PathBuf::new(),
            what: format!("{count} disks configured, {} saved", saved.len()),
        }));
    }
    Ok(())
}

/// Each vsock connection holds a descriptor: the soft limit on them (often 1024) goes up to
/// the hard one, so that [`devices::virtio::vsock::MAX_CONNECTIONS`] fit where the host allows.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own; a failure leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            log::debug!("cannot raise the open file limit");
        }
    }
}

/// The virtio devices, attached.
pub(super) struct Attached {
    /// One per device: runs its queues on the event loop.
    pub queue_handlers: Vec<QueueHandler>,
    /// Where each device is (for the command line and the DSDT).
    pub slots: Vec<MmioSlot>,
    /// Each device's transport, in slot order (for snapshots).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The devices, for the API.
    pub infos: Vec<DeviceInfo>,
    /// What vmm started or created for the devices, undone when dropped.
    pub helpers: Vec<Helper>,
    /// Each disk's image (a second descriptor), in device order: a snapshot flushes them and
    /// records their sizes.
    pub disks: Vec<std::fs::File>,
}

/// Makes each device of `opened` and attaches it, in order: a virtio-mmio slot on `mmio`, its
/// interrupt and queue notifications wired through KVM.
pub(super) fn attach(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    stop: &Arc<VmStop>,
    opened: Vec<Opened>,
) -> Result<Attached, Error> {
    let mut manager = DeviceManager::default();
    let mut queue_handlers = Vec::with_capacity(opened.len());
    let mut infos = Vec::with_capacity(opened.len());
    let mut helpers = Vec::new();
    let mut disk_files = Vec::new();
    let (mut disks, mut nets) = (0, 0);
    for device in opened {
        let (info, device): (DeviceInfo, Arc<Mutex<dyn VirtioDevice>>) = match device {
            Opened::Block(disk, file) => {
                disk_files.push(file.try_clone().map_err(|source| Error::Io {
                    what: "a disk image's descriptor",
                    source,
                })?);
                let block =
                    Block::new(file, disk.read_only, disk.id.clone()).map_err(|source| {
                        Error::Block {
                            path: disk.path.clone(),
                            source,
                        }
                    })?;
                let mut info = DeviceInfo::new("virtio-blk", disk_name(disks))
                    .with("path", disk.path.display().to_string())
                    .with("read_only", disk.read_only);
                if let Some(id) = disk.id {
                    info = info.with("id", id);
                }
                disks += 1;
                (info, Arc::new(Mutex::new(block)))
            }
            Opened::Net(net, tap) => {
                let name = format!("eth{nets}");
                nets += 1;
                let mac = net.mac.unwrap_or_else(|| generated_mac(tap.name()));
                log::info!("{name}: TAP {} MAC {}", tap.name(), format_mac(&mac));
                let info = DeviceInfo::new("virtio-net", name)
                    .with("tap", tap.name().to_string())
                    .with("mac", format_mac(&mac));
                (info, Arc::new(Mutex::new(Net::new(tap, mac))))
            }
            Opened::Fs(fs, stream, helper) => {
                helpers.extend(helper.map(Helper::Virtiofsd));
                let gone = StopReason::Error(format!(
                    "the virtio-fs back end for tag {:?} went away or failed; the VM stops",
                    fs.tag
                ));
                let gone = stop.trigger(gone);
                let device = Fs::new(&fs.tag, stream, gone).map_err(|source| Error::FsDevice {
                    tag: fs.tag.clone(),
                    source,
                })?;
                let mut info = DeviceInfo::new("virtio-fs", fs.tag.clone());
                info = match &fs.backend {
                    FsBackend::Dir { path, read_only } => info
                        .with("path", path.display().to_string())
                        .with("read_only", *read_only),
                    FsBackend::Socket(path) => info.with("socket", path.display().to_string()),
                };
                (info, Arc::new(Mutex::new(device)))
            }
            Opened::Rng => {
                // The name Linux gives the first virtio-rng device's hwrng.
                let info = DeviceInfo::new("virtio-rng", "virtio_rng.0".to_string());
                let rng = Rng::new().map_err(|source| Error::CreateDevice {
                    kind: info.kind,
                    source,
                })?;
                (info, Arc::new(Mutex::new(rng)))
            }
            Opened::Vsock(vsock, listener, file, restored) => {
                helpers.push(Helper::SocketFile(file));
                let device = Vsock::new(vsock.cid, listener, vsock.uds.clone(), restored)
                    .map_err(Error::VsockDevice)?;
                let info = DeviceInfo::new("virtio-vsock", "vsock0".to_string())
                    .with("cid", vsock.cid)
                    .with("uds", vsock.uds.display().to_string());
                (info, Arc::new(Mutex::new(device)))
            }
        };
        let bus_name = format!("{}:{}", info.kind, info.name);
        let handler = manager
            .attach(&vm.fd, mem, mmio, bus_name, device)
            .map_err(Error::Virtio)?;
        queue_handlers.push(handler);
        infos.push(info);
    }
    let (slots, transports) = manager.into_parts();
    Ok(Attached {
        queue_handlers,
        slots,
        transports,
        infos,
        helpers,
        disks: disk_files,
    })
}

/// What a Linux guest calls the `index`-th virtio disk: vda, vdb, … vdz, vdaa, …
fn disk_name(index: usize) -> String {
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    match index {
        0..26 => format!("vd{}", letter(index)),
        _ => format!("vd{}{}", letter(index / 26 - 1), letter(index)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_follow_linux() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
    }
}
