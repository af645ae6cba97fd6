//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::Parser;

use crate::config::{
    DiskConfig, FsBackend, FsConfig, NetConfig, RestoreConfig, VirtioConfig, VmConfig, VsockConfig,
};

/// Default kernel command line: serial console on COM1, reboot through the i8042 keyboard
/// controller (which the VMM turns into a clean exit), and reboot at once on a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// A small, fast KVM virtual machine monitor.
///
/// Boots a Linux kernel (bzImage or ELF vmlinux, PVH when the ELF has the note) with an
/// optional initramfs, and connects the guest's serial console (COM1) to this terminal.
/// The guest's reboot, a triple fault, SIGINT and SIGTERM all end the VMM with exit code 0.
#[derive(Debug, Clone, Parser)]
#[command(name = "vmm", version, about, long_about = None)]
pub struct Cli {
    /// Guest kernel: a bzImage, or an ELF vmlinux (booted through PVH when it has the
    /// XEN_ELFNOTE_PHYS32_ENTRY note, else through its 64-bit entry point).
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) loaded into guest memory per the Linux boot protocol.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line. The VMM appends what it must itself (the devices it creates).
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub memory: u64,

    /// Number of vCPUs (the guest sees them in its MP table).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub cpus: u16,

    /// Root disk image (a raw file): attached as the first virtio-blk disk, /dev/vda, and
    /// `root=/dev/vda rw` is added to the command line (`ro` with --rootfs-ro).
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,

    /// Attach the root disk read-only: the file is opened read-only and the guest's writes fail.
    #[arg(long, requires = "rootfs")]
    pub rootfs_ro: bool,

    /// More disks, in order after the root disk (/dev/vdb, …): `path=PATH[,ro][,id=ID]`.
    /// Repeatable. `ro` opens the file read-only; `id` is the serial the guest reads (20 bytes
    /// at most).
    #[arg(long = "drive", value_name = "path=PATH[,ro][,id=ID]", value_parser = parse_drive)]
    pub drives: Vec<DiskConfig>,

    /// A network interface backed by a TAP device: `tap=NAME[,mac=MAC]`. Repeatable (eth0,
    /// eth1, …). The TAP is created when it does not exist (needs CAP_NET_ADMIN), else
    /// attached. Without `mac=` a stable MAC is derived from the TAP name.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,

    /// A host directory shared with the guest through virtio-fs: `tag=TAG,path=DIR[,ro]`
    /// (vmm runs virtiofsd for DIR, found as $VMM_VIRTIOFSD, else on PATH; `cargo install
    /// virtiofsd` installs it) or `tag=TAG,socket=PATH` (a vhost-user back end you run). The
    /// guest mounts it with `mount -t virtiofs TAG DIR`. Repeatable.
    #[arg(long = "fs", value_name = "tag=TAG,path=DIR[,ro]", value_parser = parse_fs,
          conflicts_with = "restore")]
    pub fs: Vec<FsConfig>,

    /// Sockets between host and guest (virtio-vsock), with Firecracker's host side:
    /// `cid=N,uds=PATH`. A host program connects to the Unix socket PATH (created by vmm,
    /// mode 0600, removed when it ends) and writes `CONNECT <port>\n`; vmm answers
    /// `OK <host port>\n` once the guest accepted. A guest connection to CID 2, port P goes to
    /// the Unix socket `PATH_P`, where a host program listens. cid defaults to 3. With
    /// --restore: `uds=PATH` gives the snapshot's device a new socket (cid is the snapshot's).
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockArg>,

    /// Print a boot timeline on stderr: milliseconds since the VMM started, for each phase,
    /// and each byte the guest writes to the debug port 0x80.
    #[arg(long)]
    pub timings: bool,

    /// Serve the control API on a Unix socket at PATH (created with mode 0600, removed when
    /// the VMM ends; a stale socket there is replaced): HTTP/1.1 and JSON, e.g.
    /// `curl --unix-socket PATH http://localhost/vm`. Endpoints: GET /vm, GET /vm/exits,
    /// PUT /vm/pause, PUT /vm/resume, PUT /vm/stop, PUT /vm/snapshot.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Print the vCPU exit statistics (by reason and by device, with the time spent handling
    /// them) on stderr when the VM ends.
    #[arg(long)]
    pub exit_stats: bool,

    /// Start the VM saved in the snapshot directory DIR (written by `PUT /vm/snapshot`)
    /// instead of booting a kernel: the guest continues where it was paused. Its memory,
    /// vCPUs, disks and network interfaces come from the snapshot (the disks and TAPs are
    /// opened again by their paths and names, or: `--drive path=PATH` once per snapshot disk
    /// and `--net tap=NAME` once per interface give each clone its own, in order).
    #[arg(long, value_name = "DIR",
          conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "cpus", "rootfs"])]
    pub restore: Option<PathBuf>,

    /// Run without the seccomp filters (for debugging: every thread of the VMM normally runs
    /// under an allow-list of the system calls it needs, and any other call ends the VMM).
    #[arg(long)]
    pub no_seccomp: bool,

    /// Do not ask the host for transparent huge pages for guest RAM. By default guest RAM from
    /// 2 MiB up is marked MADV_HUGEPAGE (QEMU and Cloud Hypervisor mark all of it): fewer page
    /// faults and faster guest memory where the host's THP policy is `madvise`, host memory
    /// taken 2 MiB at a time.
    #[arg(long, conflicts_with = "restore")]
    pub no_thp: bool,

    /// No virtio-rng device. By default the guest gets one (virtio 1.2 §5.4): bytes from the
    /// host's getrandom(2), at most 64 KiB per request and 1 MiB/s, which Linux uses as
    /// /dev/hwrng and to seed its entropy pool at boot. A restored VM has what it was
    /// snapshotted with.
    #[arg(long, conflicts_with = "restore")]
    pub no_rng: bool,

    /// Once everything given is open (kernel, initrd, disks, TAPs, /dev/kvm), shut vmm in:
    /// new mount, IPC and UTS namespaces with DIR as the root (pivot_root, else chroot), the
    /// user and group --jail-uid/--jail-gid, no capabilities, no_new_privs, no core dumps, and
    /// Landlock where the kernel has it. Needs root. At run time paths are inside DIR: the API
    /// socket, snapshot directories and vsock's `PATH_P` (DIR must be writable by that user
    /// for them); `--vsock uds=` must be a path inside DIR.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,

    /// With --jail: the user vmm runs as (default 65534, nobody).
    #[arg(long, value_name = "UID", requires = "jail")]
    pub jail_uid: Option<u32>,

    /// With --jail: the group vmm runs as (default 65534, nogroup).
    #[arg(long, value_name = "GID", requires = "jail")]
    pub jail_gid: Option<u32>,

    /// With --restore: keep the vCPUs paused until `PUT /vm/resume`.
    #[arg(long, requires = "restore", conflicts_with = "kernel")]
    pub restore_paused: bool,
}

/// The longest disk id virtio-blk can report (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_DRIVE_ID_LEN: usize = 20;

/// What the command line asks for: boot a kernel, or restore a snapshot.
#[derive(Debug, Clone)]
pub enum Command {
    Boot(VmConfig),
    Restore(RestoreConfig),
}

impl Cli {
    /// The configuration the options describe; `kvm_path` is the KVM device node to use.
    pub fn command(self, kvm_path: PathBuf) -> Command {
        let seccomp = !self.no_seccomp;
        let Some(kernel) = self.kernel.filter(|_| self.restore.is_none()) else {
            // clap requires --kernel or --restore.
            return Command::Restore(RestoreConfig {
                dir: self.restore.unwrap_or_default(),
                paused: self.restore_paused,
                kvm_path,
                api_socket: self.api_socket,
                exit_stats: self.exit_stats,
                seccomp,
                vsock: self.vsock.map(|v| (v.cid, v.uds)),
                disks: self.drives,
                nets: self.nets,
                jail: self.jail.map(|dir| crate::jail::JailConfig {
                    dir,
                    uid: self.jail_uid.unwrap_or(crate::jail::DEFAULT_ID),
                    gid: self.jail_gid.unwrap_or(crate::jail::DEFAULT_ID),
                }),
            });
        };
        // The root disk comes first (/dev/vda), then the drives, the network interfaces and
        // the entropy device.
        let root = self.rootfs.iter().map(|path| DiskConfig {
            path: path.clone(),
            read_only: self.rootfs_ro,
            id: None,
        });
        let disks = root.chain(self.drives).map(VirtioConfig::Block);
        let nets = self.nets.into_iter().map(VirtioConfig::Net);
        let fs = self.fs.into_iter().map(VirtioConfig::Fs);
        let rng = (!self.no_rng).then_some(VirtioConfig::Rng);
        let vsock = self.vsock.map(|v| {
            VirtioConfig::Vsock(VsockConfig {
                cid: v.cid.unwrap_or(DEFAULT_VSOCK_CID),
                uds: v.uds,
            })
        });
        Command::Boot(VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory_mib: self.memory,
            cpus: self.cpus,
            devices: disks
                .chain(nets)
                .chain(fs)
                .chain(rng)
                .chain(vsock)
                .collect(),
            root_disk: self.rootfs.is_some(),
            kvm_path,
            api_socket: self.api_socket,
            exit_stats: self.exit_stats,
            seccomp,
            thp: !self.no_thp,
            jail: self.jail.map(|dir| crate::jail::JailConfig {
                dir,
                uid: self.jail_uid.unwrap_or(crate::jail::DEFAULT_ID),
                gid: self.jail_gid.unwrap_or(crate::jail::DEFAULT_ID),
            }),
        })
    }
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut tap = None;
    let mut mac = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
            Some(("mac", m)) => {
                mac = Some(devices::virtio::net::parse_mac(m).map_err(|e| e.to_string())?)
            }
            _ => {
                return Err(format!(
                    "unknown net option {part:?}; expected tap=NAME[,mac=MAC]"
                ))
            }
        }
    }
    let tap = tap.ok_or("missing tap=NAME; expected tap=NAME[,mac=MAC]")?;
    Ok(NetConfig { tap, mac })
}

/// `--vsock` as given: the CID is optional (the default for a boot, the snapshot's for a
/// restore).
#[derive(Debug, Clone)]
pub struct VsockArg {
    pub cid: Option<u64>,
    pub uds: PathBuf,
}

/// The guest's CID when `--vsock` gives none: the first one a guest may have.
pub const DEFAULT_VSOCK_CID: u64 = devices::virtio::vsock::MIN_GUEST_CID;

fn parse_vsock(s: &str) -> Result<VsockArg, String> {
    use devices::virtio::vsock::{MAX_GUEST_CID, MIN_GUEST_CID};
    const EXPECTED: &str = "expected cid=N,uds=PATH";
    let (mut cid, mut uds) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", n)) => match n.parse::<u64>() {
                Ok(n) if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&n) => cid = Some(n),
                _ => {
                    return Err(format!(
                        "cid={n:?}: a guest's CID is a number from {MIN_GUEST_CID} to \
                         {MAX_GUEST_CID} (0-2 are reserved: 2 is the host)"
                    ))
                }
            },
            Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            _ => return Err(format!("unknown vsock option {part:?}; {EXPECTED}")),
        }
    }
    let uds = uds.ok_or(format!("missing uds=PATH; {EXPECTED}"))?;
    Ok(VsockArg { cid, uds })
}

/// The longest mount tag virtio-fs carries (virtio 1.2 §5.11.4).
const MAX_FS_TAG_LEN: usize = devices::virtio::fs::TAG_LEN;

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    const EXPECTED: &str = "expected tag=TAG,path=DIR[,ro] or tag=TAG,socket=PATH";
    let (mut tag, mut path, mut socket, mut read_only) = (None, None, None, false);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tag", t)) => {
                if t.is_empty() || t.len() > MAX_FS_TAG_LEN {
                    return Err(format!(
                        "tag={t:?}: a mount tag is 1 to {MAX_FS_TAG_LEN} bytes"
                    ));
                }
                tag = Some(t.to_string());
            }
            Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
            None if part == "ro" => read_only = true,
            _ => return Err(format!("unknown fs option {part:?}; {EXPECTED}")),
        }
    }
    let tag = tag.ok_or(format!("missing tag=TAG; {EXPECTED}"))?;
    let backend = match (path, socket) {
        (Some(path), None) => FsBackend::Dir { path, read_only },
        (None, Some(_)) if read_only => {
            return Err(
                "ro goes with path=DIR: a back end on socket=PATH decides itself".to_string(),
            )
        }
        (None, Some(socket)) => FsBackend::Socket(socket),
        _ => return Err(format!("give one of path=DIR and socket=PATH; {EXPECTED}")),
    };
    Ok(FsConfig { tag, backend })
}

fn parse_drive(s: &str) -> Result<DiskConfig, String> {
    let mut path = None;
    let mut read_only = false;
    let mut id = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("id", v)) => {
                if v.is_empty() || v.len() > MAX_DRIVE_ID_LEN || !v.is_ascii() {
                    return Err(format!(
                        "id={v:?}: an id is 1 to {MAX_DRIVE_ID_LEN} ASCII characters"
                    ));
                }
                id = Some(v.to_string());
            }
            None if part == "ro" => read_only = true,
            _ => {
                return Err(format!(
                    "unknown drive option {part:?}; expected path=PATH[,ro][,id=ID]"
                ))
            }
        }
    }
    let path = path.ok_or("missing path=PATH; expected path=PATH[,ro][,id=ID]")?;
    Ok(DiskConfig {
        path,
        read_only,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(cli.kernel, Some(PathBuf::from("k")));
        assert_eq!(cli.memory, 128);
        assert_eq!(cli.cpus, 1);
        assert_eq!(cli.cmdline, DEFAULT_CMDLINE);
        assert!(cli.initrd.is_none());
        assert!(!cli.timings);
        assert!(cli.api_socket.is_none());
        assert!(!cli.exit_stats);
    }

    #[test]
    fn fs_options_and_the_device_order() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--drive",
            "path=d.img",
            "--fs",
            "tag=src,path=/src,ro",
            "--fs",
            "tag=mine,socket=/run/fs.sock",
            "--net",
            "tap=tap0",
        ])
        .unwrap();
        let Command::Boot(config) = cli.command(PathBuf::from("/dev/kvm")) else {
            panic!("a boot");
        };
        let kinds: Vec<&str> = config
            .devices
            .iter()
            .map(|d| match d {
                VirtioConfig::Block(_) => "blk",
                VirtioConfig::Net(_) => "net",
                VirtioConfig::Fs(_) => "fs",
                VirtioConfig::Rng => "rng",
                VirtioConfig::Vsock(_) => "vsock",
            })
            .collect();
        assert_eq!(kinds, ["blk", "net", "fs", "fs", "rng"]);
        assert_eq!(
            config.devices[2],
            VirtioConfig::Fs(FsConfig {
                tag: "src".into(),
                backend: FsBackend::Dir {
                    path: "/src".into(),
                    read_only: true
                },
            })
        );
        assert_eq!(
            config.devices[3],
            VirtioConfig::Fs(FsConfig {
                tag: "mine".into(),
                backend: FsBackend::Socket("/run/fs.sock".into()),
            })
        );
    }

    #[test]
    fn bad_fs_options_say_what_is_expected() {
        for (bad, says) in [
            ("path=/src", "missing tag=TAG"),
            ("tag=src", "give one of path=DIR and socket=PATH"),
            (
                "tag=src,path=/a,socket=/b",
                "give one of path=DIR and socket=PATH",
            ),
            ("tag=src,socket=/b,ro", "ro goes with path=DIR"),
            ("tag=,path=/a", "a mount tag is 1 to 36 bytes"),
            (
                &format!("tag={},path=/a", "t".repeat(37)),
                "a mount tag is 1 to 36 bytes",
            ),
            ("tag=src,path=/a,rw", "unknown fs option \"rw\""),
        ] {
            let err = parse(&["--kernel", "k", "--fs", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "--fs {bad}: {err}");
        }
        let err = parse(&["--restore", "d", "--fs", "tag=a,path=/a"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn api_socket_and_exit_stats() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--api-socket",
            "/tmp/vmm.sock",
            "--exit-stats",
        ])
        .unwrap();
        assert_eq!(cli.api_socket, Some(PathBuf::from("/tmp/vmm.sock")));
        assert!(cli.exit_stats);
        assert_eq!(
            parse(&["--kernel", "k", "--api-socket"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn all_options() {
        let cli = parse(&[
            "--kernel",
            "bz",
            "--initrd",
            "rd",
            "--cmdline",
            "console=ttyS0 quiet",
            "--memory",
            "512",
            "--cpus",
            "4",
            "--timings",
        ])
        .unwrap();
        assert_eq!(cli.initrd, Some(PathBuf::from("rd")));
        assert_eq!(cli.cmdline, "console=ttyS0 quiet");
        assert_eq!(cli.memory, 512);
        assert_eq!(cli.cpus, 4);
        assert!(cli.timings);
    }

    #[test]
    fn rootfs_and_drives() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--rootfs",
            "root.img",
            "--rootfs-ro",
            "--drive",
            "path=a.img",
            "--drive",
            "path=b.img,ro,id=disk-b",
        ])
        .unwrap();
        assert_eq!(cli.rootfs, Some(PathBuf::from("root.img")));
        assert!(cli.rootfs_ro);
        assert_eq!(
            cli.drives,
            vec![
                DiskConfig {
                    path: "a.img".into(),
                    read_only: false,
                    id: None
                },
                DiskConfig {
                    path: "b.img".into(),
                    read_only: true,
                    id: Some("disk-b".into())
                },
            ]
        );
    }

    #[test]
    fn bad_drives_are_usage_errors() {
        for bad in [
            "ro",
            "path=",
            "path=a,rw",
            "path=a,id=",
            "path=a,id=123456789012345678901",
            "file=a",
        ] {
            let err = parse(&["--kernel", "k", "--drive", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        // --rootfs-ro needs --rootfs.
        assert_eq!(
            parse(&["--kernel", "k", "--rootfs-ro"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn nets() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--net",
            "tap=tap0",
            "--net",
            "tap=tap1,mac=52:54:00:ab:cd:ef",
        ])
        .unwrap();
        assert_eq!(
            cli.nets,
            vec![
                NetConfig {
                    tap: "tap0".into(),
                    mac: None
                },
                NetConfig {
                    tap: "tap1".into(),
                    mac: Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
                },
            ]
        );
        for bad in [
            "tap=",
            "mac=52:54:00:ab:cd:ef",
            "tap=a,mac=52:54:00:ab:cd",
            "tap=a,mac=01:00:5e:00:00:01",
            "tap=a,mac=52:54:00:ab:cd:zz",
            "tap=a,vhost=on",
        ] {
            assert_eq!(
                parse(&["--kernel", "k", "--net", bad])
                    .unwrap_err()
                    .exit_code(),
                2,
                "{bad}"
            );
        }
    }

    #[test]
    fn restore_takes_no_kernel_and_nothing_the_snapshot_decides() {
        let cli = parse(&["--restore", "snap", "--restore-paused", "--api-socket", "s"]).unwrap();
        assert_eq!(cli.restore, Some(PathBuf::from("snap")));
        assert!(cli.restore_paused && cli.kernel.is_none());
        for extra in [
            &["--kernel", "k"][..],
            &["--memory", "256"],
            &["--cpus", "2"],
            &["--rootfs", "r.img"],
            &["--no-thp"],
        ] {
            let args: Vec<&str> = ["--restore", "snap"].iter().chain(extra).copied().collect();
            assert_eq!(parse(&args).unwrap_err().exit_code(), 2, "{extra:?}");
        }
        // A clone's own disks and TAPs, in order.
        let cli = parse(&[
            "--restore",
            "snap",
            "--drive",
            "path=a.img",
            "--drive",
            "path=b.img,ro",
            "--net",
            "tap=t1",
        ])
        .unwrap();
        let Command::Restore(config) = cli.command(PathBuf::from("/dev/kvm")) else {
            panic!("a restore");
        };
        let paths: Vec<_> = config
            .disks
            .iter()
            .map(|d| (d.path.clone(), d.read_only))
            .collect();
        assert_eq!(
            paths,
            [
                (PathBuf::from("a.img"), false),
                (PathBuf::from("b.img"), true)
            ]
        );
        assert_eq!(config.nets[0].tap, "t1");
        // --restore-paused needs --restore.
        assert_eq!(
            parse(&["--kernel", "k", "--restore-paused"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn vsock_for_a_boot_and_a_restore() {
        let Command::Boot(config) = parse(&["--kernel", "k", "--vsock", "uds=/tmp/v.sock"])
            .unwrap()
            .command(PathBuf::from("/dev/kvm"))
        else {
            panic!("a boot");
        };
        let vsock = VirtioConfig::Vsock(VsockConfig {
            cid: DEFAULT_VSOCK_CID,
            uds: "/tmp/v.sock".into(),
        });
        assert_eq!(config.devices.last(), Some(&vsock));
        let Command::Restore(config) =
            parse(&["--restore", "snap", "--vsock", "cid=9,uds=/tmp/w.sock"])
                .unwrap()
                .command(PathBuf::from("/dev/kvm"))
        else {
            panic!("a restore");
        };
        assert_eq!(config.vsock, Some((Some(9), PathBuf::from("/tmp/w.sock"))));
    }

    #[test]
    fn kernel_is_required() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn zero_and_bad_values_are_usage_errors() {
        for args in [
            &["--kernel", "k", "--memory", "0"][..],
            &["--kernel", "k", "--cpus", "0"],
            &["--kernel", "k", "--cpus", "65536"],
            &["--kernel", "k", "--memory", "lots"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
