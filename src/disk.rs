//! Opening disk images: a regular file, read-only when asked (then the VMM cannot write it at
//! all), and locked (`flock`, through `File::try_lock`) so that two VMMs never write the same
//! image: a writer takes an exclusive lock, a read-only user a shared one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open it")]
    Open(#[source] io::Error),
    #[error("it is not a regular file (a raw disk image file is expected)")]
    NotRegular,
    #[error(
        "it is locked by another process (is another vmm using it?); stop that process, or \
         attach the image read-only in both"
    )]
    Locked,
    #[error("cannot lock it")]
    Lock(#[source] io::Error),
}

/// Opens and locks the disk image at `path`.
pub fn open_disk(path: &Path, read_only: bool) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(Error::Open)?;
    if !file.metadata().map_err(Error::Open)?.is_file() {
        return Err(Error::NotRegular);
    }
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
}
