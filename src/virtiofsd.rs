//! virtiofsd, the virtio-fs back end vmm starts for `--fs tag=TAG,path=DIR`: found as
//! `$VMM_VIRTIOFSD`, else on `PATH` (`cargo install virtiofsd` puts it in `~/.cargo/bin`).
//!
//! It listens on a socket in a private directory (mode 0700) that vmm removes, socket and
//! all, as soon as it is connected, so nothing of it is left on disk whatever happens next.
//! The process is stopped when its [`Virtiofsd`] drops (every way vmm ends), and the kernel
//! kills it if vmm dies first (`PR_SET_PDEATHSIG`). Its own sandbox stays on: a chroot into
//! the shared directory when vmm runs as root (the namespace sandbox needs `pivot_root`,
//! which an initramfs root refuses), its default namespaces otherwise.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long virtiofsd has to listen on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why virtiofsd could not be started for a directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is not a directory vmm can read")]
    Dir(PathBuf, #[source] io::Error),
    #[error(
        "virtiofsd was not found (looked at $VMM_VIRTIOFSD, then PATH): install it with \
         `cargo install virtiofsd` (it needs Debian's libseccomp-dev and libcap-ng-dev), or \
         set VMM_VIRTIOFSD=/path/to/virtiofsd"
    )]
    NotFound,
    #[error("cannot make virtiofsd's socket directory")]
    SocketDir(#[source] io::Error),
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] io::Error),
    #[error("virtiofsd ended at start ({0}); its messages are above")]
    Exited(ExitStatus),
    #[error("virtiofsd did not listen on its socket within {START_TIMEOUT:?}")]
    Timeout,
    #[error("cannot connect to the vhost-user socket {0}")]
    Connect(PathBuf, #[source] io::Error),
}

/// A running virtiofsd, stopped when dropped.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtiofsd binary: `$VMM_VIRTIOFSD`, else the first on `PATH`.
pub fn find() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("VMM_VIRTIOFSD") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("virtiofsd"))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::NotFound)
}

/// A new private directory for the socket.
fn socket_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    for attempt in 0..100 {
        let dir = base.join(format!("vmm-virtiofsd-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name for a socket directory"))
}

/// Connects to the vhost-user back end listening on `socket`.
pub fn connect(socket: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(socket).map_err(|e| Error::Connect(socket.to_path_buf(), e))
}

/// Starts virtiofsd for `dir` (read-only with `read_only`) and connects to it.
pub fn start(dir: &Path, read_only: bool) -> Result<(Virtiofsd, UnixStream), Error> {
    std::fs::read_dir(dir).map_err(|e| Error::Dir(dir.to_path_buf(), e))?;
    let binary = find()?;
    // Removed, socket then directory, if a stop signal ends set-up (virtiofsd itself dies
    // with vmm).
    let mut setup_files = crate::signals::setup_files();
    let socket_dir = socket_dir().map_err(Error::SocketDir)?;
    let socket = socket_dir.join("fs.sock");
    setup_files.record(&socket_dir);
    setup_files.record(&socket);
    drop(setup_files);
    let started = spawn(&binary, dir, read_only, &socket).and_then(|child| {
        let virtiofsd = Virtiofsd { child };
        wait_and_connect(virtiofsd, &socket)
    });
    // Connected or not, the socket is not needed any more.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir(&socket_dir);
    started
}

fn spawn(binary: &Path, dir: &Path, read_only: bool, socket: &Path) -> Result<Child, Error> {
    let mut command = Command::new(binary);
    command
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(dir)
        .args(["--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if read_only {
        command.arg("--readonly");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.args(["--sandbox", "chroot"]);
    }
    // SAFETY: between fork and exec the closure calls only prctl, which is async-signal-safe,
    // and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| Error::Spawn(binary.to_path_buf(), e))
}

fn wait_and_connect(
    mut virtiofsd: Virtiofsd,
    socket: &Path,
) -> Result<(Virtiofsd, UnixStream), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = virtiofsd.child.try_wait() {
            return Err(Error::Exited(status));
        }
        if let Ok(stream) = UnixStream::connect(socket) {
            return Ok((virtiofsd, stream));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
