//! Opening disk images: a regular file or a host block device (an LVM volume, a loop or nbd
//! device, a device-mapper thin device), read-only when asked (then the VMM cannot write it at
//! all), and locked (`flock`, through `File::try_lock`) so that two VMMs never write the same
//! image: a writer takes an exclusive lock, a read-only user a shared one. A character device,
//! a FIFO, a socket or a directory is refused.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open it")]
    Open(#[source] io::Error),
    #[error("it is not a regular file or a block device (a raw disk image is expected)")]
    NotRegular,
    #[error(
        "it is locked by another process (is another vmm using it?); stop that process, or \
         attach the image read-only in both"
    )]
    Locked,
    #[error("cannot lock it")]
    Lock(#[source] io::Error),
}

/// Opens `path` as `options` say, without waiting for anything: a FIFO's `open` waits for a
/// peer, which would leave vmm stuck before it can even be told to stop, so the open itself is
/// non-blocking (`O_NONBLOCK`, taken off again for a regular file). `Ok(None)`: not a regular
/// file.
pub fn open_regular(options: &mut OpenOptions, path: &Path) -> io::Result<Option<File>> {
    open_checked(options, path, |t| t.is_file())
}

/// [`open_regular`], but a block device is accepted too (a disk).
fn open_file_or_block_device(options: &mut OpenOptions, path: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::FileTypeExt;
    open_checked(options, path, |t| t.is_file() || t.is_block_device())
}

fn open_checked(
    options: &mut OpenOptions,
    path: &Path,
    wanted: impl Fn(std::fs::FileType) -> bool,
) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    if !wanted(file.metadata()?.file_type()) {
        return Ok(None);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: fcntl(2) on a descriptor this function owns; it reads the status flags and
    // writes them back without O_NONBLOCK. Both results are checked.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(file))
}

/// Opens and locks the disk image at `path`.
pub fn open_disk(path: &Path, read_only: bool) -> Result<File, Error> {
    let file = open_file_or_block_device(OpenOptions::new().read(true).write(!read_only), path)
        .map_err(Error::Open)?
        .ok_or(Error::NotRegular)?;
    let locked = if read_only {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(Error::Locked),
        Err(TryLockError::Error(e)) => return Err(Error::Lock(e)),
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-disk-test-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(&[0u8; 4096]).unwrap();
        p
    }

    #[test]
    fn a_writer_excludes_every_other_user() {
        let p = image("writer");
        let _w = open_disk(&p, false).unwrap();
        assert!(matches!(open_disk(&p, false), Err(Error::Locked)));
        assert!(matches!(open_disk(&p, true), Err(Error::Locked)));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn readers_share_but_exclude_a_writer() {
        let p = image("readers");
        let _r1 = open_disk(&p, true).unwrap();
        let _r2 = open_disk(&p, true).unwrap();
        assert!(matches!(open_disk(&p, false), Err(Error::Locked)));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_only_means_the_file_cannot_be_written() {
        let p = image("ro");
        let mut f = open_disk(&p, true).unwrap();
        assert!(f.write_all(b"x").is_err());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn lock_is_released_on_close() {
        let p = image("release");
        drop(open_disk(&p, false).unwrap());
        assert!(open_disk(&p, false).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_and_non_regular_paths() {
        assert!(matches!(
            open_disk(Path::new("/nonexistent/disk.img"), false),
            Err(Error::Open(_))
        ));
        assert!(matches!(
            open_disk(Path::new("/tmp"), true),
            Err(Error::NotRegular)
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_peer() {
        let p = image("fifo");
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = p.clone();
        std::thread::spawn(move || {
            let refused = |read_only| matches!(open_disk(&fifo, read_only), Err(Error::NotRegular));
            let _ = tx.send((refused(true), refused(false)));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening a FIFO as a disk waited for a writer");
        assert_eq!(got, (true, true));
        let _ = std::fs::remove_file(&p);
    }
}
