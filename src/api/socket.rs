//! A listening Unix socket file that vmm creates (the API's `--api-socket`, virtio-vsock's
//! `--vsock uds=PATH`): checked before the VM starts, bound with mode 0600, and removed when the
//! VMM ends ([`SocketFile`]). Errors name the option that gave the path.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `sizeof(sockaddr_un.sun_path)`, the NUL included.
const SUN_PATH_LEN: usize = 108;

/// Why the API socket path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "{option} {path}: the path exists and is not a socket; remove it or choose another path"
    )]
    NotASocket { option: &'static str, path: PathBuf },
    #[error(
        "{option} {path}: another process is listening on this socket (another vmm?); \
         stop it or choose another path"
    )]
    InUse { option: &'static str, path: PathBuf },
    #[error(
        "{option} {path}: the path is {len} bytes long, a Unix socket's path at most {}",
        SUN_PATH_LEN - 1
    )]
    TooLong {
        option: &'static str,
        path: PathBuf,
        len: usize,
    },
    #[error("{option} {path}: the directory {dir} does not exist")]
    NoDirectory {
        option: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("{option} {path}: cannot use this path")]
    Io {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{option} {path}: cannot create the socket")]
    Bind {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What is at the path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Nothing: the socket can be created there.
    Free,
    /// A socket nobody listens on (a VMM that was killed left it): removed before binding.
    Stale,
}

/// Checks that a socket can be created at `path` (given as `option`): nothing there, or a
/// stale socket.
pub fn check_path(option: &'static str, path: &Path) -> Result<PathState, SocketError> {
    let len = path.as_os_str().len();
    if len >= SUN_PATH_LEN {
        return Err(SocketError::TooLong {
            option,
            path: path.to_owned(),
            len,
        });
    }
    let io_err = |source| SocketError::Io {
        option,
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(SocketError::NoDirectory {
                    option,
                    path: path.to_owned(),
                    dir: dir.to_owned(),
                });
            }
            Ok(PathState::Free)
        }
        Err(e) => Err(io_err(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(SocketError::NotASocket {
            option,
            path: path.to_owned(),
        }),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(SocketError::InUse {
                option,
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(PathState::Stale),
            Err(e) => Err(io_err(e)),
        },
    }
}

/// The socket file this VMM created; dropping it removes the file (unless something else
/// has been put at the path since).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same file under another name: where a jailed vmm finds it (`--jail`).
    pub fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // The same inode, and still a socket (a file put there since can reuse the number).
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove the socket {}: {e}", self.path.display());
            }
        }
    }
}

/// Creates the listening socket at `path` (given as `option`), mode 0600, non-blocking; a
/// stale socket there is replaced.
pub fn bind(option: &'static str, path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let bind_err = |source| SocketError::Bind {
        option,
        path: path.to_owned(),
        source,
    };
    if check_path(option, path)? == PathState::Stale {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(bind_err(e)),
            _ => {}
        }
    }
    // bind(2) creates the file with mode 0777 & ~umask: a umask of 0177 makes it 0600 from
    // the start, with no moment at which another user could connect. The umask is the
    // process's: the only other threads that may run now (vCPUs) create no files.
    // Made under set-up's file guard: a stop signal during set-up removes it.
    let mut setup_files = crate::signals::setup_files();
    setup_files.record(path);
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    drop(setup_files);
    let listener = listener.map_err(bind_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn bind_creates_a_0600_socket_and_the_guard_removes_it() {
        let path = scratch("bind.sock");
        assert_eq!(check_path("--api-socket", &path).unwrap(), PathState::Free);
        let (listener, file) = bind("--api-socket", &path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(matches!(
            check_path("--api-socket", &path),
            Err(SocketError::InUse { .. })
        ));
        drop(listener);
        assert_eq!(check_path("--api-socket", &path).unwrap(), PathState::Stale);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let path = scratch("stale.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "std leaves the file behind");
        let (_listener, file) = bind("--api-socket", &path).unwrap();
        assert!(UnixStream::connect(file.path()).is_ok());
    }

    #[test]
    fn the_guard_leaves_a_file_that_is_not_its_socket() {
        let path = scratch("replaced.sock");
        let (listener, file) = bind("--api-socket", &path).unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(file);
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bad_paths_are_refused_with_what_to_do() {
        let file = scratch("regular");
        std::fs::write(&file, b"x").unwrap();
        let err = check_path("--api-socket", &file).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&file.display().to_string()) && msg.contains("remove it"),
            "{msg}"
        );
        std::fs::remove_file(&file).unwrap();

        let dir = std::env::temp_dir();
        assert!(matches!(
            check_path("--api-socket", &dir),
            Err(SocketError::NotASocket { .. })
        ));
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            check_path("--api-socket", &long),
            Err(SocketError::TooLong { len: 125, .. })
        ));
        let orphan = PathBuf::from("/nonexistent-vmm-dir/api.sock");
        let err = check_path("--api-socket", &orphan).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-vmm-dir does not exist"),
            "{err}"
        );
    }
}
