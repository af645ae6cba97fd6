//! `--jail DIR`: once vmm has opened everything it was given (the kernel, the initrd, the
//! disks, the TAPs, `/dev/kvm`), and before it maps guest memory or starts a thread that runs
//! guest-driven code, it shuts itself in, as Firecracker's jailer does for Firecracker, so that
//! a guest that took over a device model finds nothing worth having:
//!
//! 1. new mount, IPC and UTS namespaces (`unshare`), every mount made private;
//! 2. DIR bind-mounted on itself and made the root (`pivot_root`, the old root detached); where
//!    the root cannot be pivoted (an initramfs root, as in the test host), `chroot` instead;
//! 3. core dumps off (`RLIMIT_CORE` 0: a dump would hold guest memory);
//! 4. every capability dropped from the bounding set, supplementary groups cleared, then the
//!    real, effective and saved group and user IDs set to `--jail-gid`/`--jail-uid` (on every
//!    thread), which empties the permitted and effective sets; the ambient set cleared and the
//!    capability sets zeroed explicitly (a uid of 0 keeps none either);
//! 5. `no_new_privs`;
//! 6. a Landlock rule set (where the kernel has Landlock): file system access only beneath the
//!    new root, and no TCP `bind` or `connect` (Landlock ABI 4 and later).
//!
//! Threads made afterwards (the vCPUs, the kernel copy) inherit all of it; the seccomp filters
//! go on later, as without a jail. What a jailed vmm does at run time with a path — the API
//! socket, a snapshot directory, a vsock guest connection to `PATH_P` — happens inside DIR, as
//! the jail's uid: DIR must be a directory that uid may write to (for the API socket, the vsock
//! socket's removal and snapshots), and nothing else needs to be in it (no device nodes:
//! `/dev/kvm`, the TAPs, the images and a snapshot's files are open already). The vsock socket
//! (`--vsock uds=`) is bound before the jail, so it must be given inside DIR, as a host path.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `--jail DIR` with its user and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The user and group a jailed vmm runs as unless told (`nobody`, `nogroup`).
pub const DEFAULT_ID: u32 = 65534;

/// Why vmm could not shut itself in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--jail {0}: not a directory vmm can use")]
    Dir(PathBuf, #[source] io::Error),
    #[error("--jail needs root (it makes namespaces, mounts and changes user): run vmm as root, or without --jail")]
    NotRoot,
    #[error("--jail: {0} failed")]
    Step(&'static str, #[source] io::Error),
    #[error(
        "with --jail {dir}, {option} {path} must be inside {dir} (the jailed vmm reaches it \
         from inside)"
    )]
    NotInside {
        option: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
}

/// Where `path`, a host path inside DIR, is for a vmm jailed in DIR (`option` names it in the
/// error when it is not inside). Its parent directory must exist.
pub fn inside(jail: &JailConfig, option: &'static str, path: &Path) -> Result<PathBuf, Error> {
    let not_inside = || Error::NotInside {
        option,
        path: path.to_owned(),
        dir: jail.dir.clone(),
    };
    let dir = jail
        .dir
        .canonicalize()
        .map_err(|e| Error::Dir(jail.dir.clone(), e))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent.canonicalize().map_err(|_| not_inside())?;
    let relative = parent.strip_prefix(&dir).map_err(|_| not_inside())?;
    let name = path.file_name().ok_or_else(not_inside)?;
    Ok(Path::new("/").join(relative).join(name))
}

/// What [`enter`] did, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entered {
    /// `pivot_root` (true) or `chroot` (false).
    pub pivoted: bool,
    /// Landlock's rules are on (the kernel has Landlock).
    pub landlocked: bool,
}

fn step(what: &'static str, rc: libc::c_int) -> Result<(), Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Step(what, io::Error::last_os_error()))
    }
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        Error::Dir(
            path.to_owned(),
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })
}

/// What can be checked before vmm opens anything: DIR is a directory, and vmm runs as root.
pub fn check(jail: &JailConfig) -> Result<(), Error> {
    let meta = std::fs::metadata(&jail.dir).map_err(|e| Error::Dir(jail.dir.clone(), e))?;
    if !meta.is_dir() {
        return Err(Error::Dir(
            jail.dir.clone(),
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    Ok(())
}

/// Shuts the calling process in as [`JailConfig`] says (see the module's steps).
pub fn enter(jail: &JailConfig) -> Result<Entered, Error> {
    check(jail)?;
    let dir = c_path(&jail.dir)?;
    let dot = c".";
    let root = c"/";
    // SAFETY: each call below gets valid NUL-terminated paths (or null where the call allows
    // it) and plain integers; each result is checked.
    let pivoted = unsafe {
        // 1.
        step(
            "unshare (mount, IPC and UTS namespaces)",
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS),
        )?;
        step(
            "making every mount private",
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        // 2.
        step(
            "bind-mounting the jail directory",
            libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
        )?;
        step("chdir to the jail directory", libc::chdir(dir.as_ptr()))?;
        let pivoted = if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
            // The old root is stacked on the new one: detach it.
            step(
                "detaching the old root",
                libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            )?;
            true
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(Error::Step("pivot_root", e));
            }
            // The root is an initramfs (rootfs cannot be pivoted away): chroot. With every
            // capability gone below, the chroot cannot be left either.
            step("chroot", libc::chroot(dot.as_ptr()))?;
            false
        };
        step("chdir to the new root", libc::chdir(root.as_ptr()))?;
        // 3.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        step(
            "setrlimit(RLIMIT_CORE)",
            libc::setrlimit(libc::RLIMIT_CORE, &no_core),
        )?;
        // 4.
        for cap in 0..64 {
            // EINVAL past the last capability this kernel knows.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        step("setgroups", libc::setgroups(0, std::ptr::null()))?;
        step("setresgid", libc::setresgid(jail.gid, jail.gid, jail.gid))?;
        step("setresuid", libc::setresuid(jail.uid, jail.uid, jail.uid))?;
        step(
            "clearing the ambient capabilities",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
        )?;
        drop_capabilities()?;
        // 5.
        step(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        pivoted
    };
    // 6.
    let landlocked = landlock_rules()?;
    Ok(Entered {
        pivoted,
        landlocked,
    })
}

/// Empties the calling thread's effective, permitted and inheritable capability sets
/// (`capset`, version 3: two 32-bit halves).
fn drop_capabilities() -> Result<(), Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a valid version-3 header and two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    step("capset", rc as libc::c_int)
}

/// Landlock where the kernel has it: every file system access right is handled and allowed
/// only beneath the new root, and TCP `bind`/`connect` are handled with no rule (so denied).
/// Returns whether the rules are on.
fn landlock_rules() -> Result<bool, Error> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, ABI,
    };
    let abi = ABI::V4;
    let landlock_err = |e: landlock::RulesetError| Error::Step("Landlock", io::Error::other(e));
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock_err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock_err)?
        .create()
        .map_err(landlock_err)?
        .add_rules(landlock::path_beneath_rules(["/"], AccessFs::from_all(abi)))
        .map_err(landlock_err)?
        .restrict_self()
        .map_err(landlock_err)?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}
