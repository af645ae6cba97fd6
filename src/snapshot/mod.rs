//! Snapshot and restore: a paused VM written to a directory (`PUT /vm/snapshot`), and a new
//! VMM process that starts from it (`vmm --restore DIR`) where the guest was paused.
//!
//! A snapshot directory holds two files:
//! - [`STATE_FILE`]: everything but guest memory ([`state::SnapshotState`]: the configuration,
//!   every vCPU, the VM's interrupt controllers, PIT and clock, the serial port, each virtio
//!   device's transport registers and queues, each saved by its owner through
//!   [`devices::Persist`]), framed by [`format`] (magic, format version, length, CRC-32);
//! - [`MEMORY_FILE`]: guest RAM as a sparse file ([`memory`]), mapped `MAP_PRIVATE` on restore,
//!   so a restore copies no memory and VMs restored from one snapshot share its page cache.
//!
//! Disks and TAPs are not copied: the restored VM opens them again by their paths and names,
//! with the usual locking and errors. A snapshot is consistent because it is taken with every
//! vCPU parked, on the event-loop thread that runs the devices' queues: no device and no vCPU
//! changes guest memory or device state while it is written.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use format::FormatError;
use state::SnapshotState;

pub mod format;
pub mod memory;
pub mod state;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the VM is running: pause it first (PUT /vm/pause)")]
    Running,
    #[error(
        "a VM with a shared directory (--fs) cannot be snapshotted: the state of its \
         vhost-user back end (virtiofsd's open files) is not carried"
    )]
    SharedDirectory,
    #[error("{0} exists and is not an empty directory: give a new or an empty directory")]
    NotEmpty(PathBuf),
    #[error("cannot write the snapshot to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the vCPUs' state")]
    Vcpus(#[source] crate::vcpus::SaveError),
    #[error("cannot read the VM's interrupt controllers, PIT and clock")]
    Vm(#[source] crate::vm::Error),
    #[error("this host's XSAVE area is larger than 4 KiB (AMX), which snapshots do not carry yet")]
    XsaveTooLarge,
    #[error("cannot flush a disk before the snapshot (fdatasync): {0}")]
    DiskSync(#[source] io::Error),
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl SaveError {
    /// Whether the request was at fault (the VM running, a directory that cannot be used),
    /// rather than the VMM.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SaveError::Running
                | SaveError::SharedDirectory
                | SaveError::NotEmpty(_)
                | SaveError::Io { .. }
        )
    }
}

/// Why a snapshot cannot be restored. Each is a usage error (exit code 2): the directory the
/// user gave is not a snapshot this vmm can start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The reason is part of the message (not a `source`: it would be printed twice).
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: FormatError },
    #[error("{path}: the snapshot does not hold together: {what}")]
    Inconsistent { path: PathBuf, what: String },
}

/// What [`save`] wrote, for the API's answer.
#[derive(Debug, Serialize)]
pub struct Saved {
    pub path: PathBuf,
    pub state_bytes: u64,
    /// The memory file's length (all of guest RAM) and the bytes of it that hold data.
    pub memory_bytes: u64,
    pub memory_data_bytes: u64,
    pub took_ms: f64,
}

/// Makes `dir` a new, empty directory (or checks an existing one is empty).
fn prepare_dir(dir: &Path) -> Result<(), SaveError> {
    let io_err = |source| SaveError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(SaveError::NotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        // Only its owner may enter it: the memory file is the guest's RAM.
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_err),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(SaveError::NotEmpty(dir.to_path_buf()))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// A new file at `path` that only its owner can read or write (mode 0600 from the start, not
/// `0666 & ~umask`): guest RAM and registers are the guest's secrets.
fn create_private(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Makes `dir` (new, or empty) a snapshot of `state` and `mem`, taken with the VM paused since
/// `started`.
pub fn save(
    dir: &Path,
    state: &SnapshotState,
    mem: &GuestMemoryMmap,
    started: Instant,
) -> Result<Saved, SaveError> {
    prepare_dir(dir)?;
    let bytes = format::encode(state)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SaveError::Io { path, source }
    };
    // The memory file first: a directory with a state file holds a whole snapshot.
    let memory_path = dir.join(MEMORY_FILE);
    let memory = create_private(&memory_path)
        .and_then(|file| memory::save(mem, &file))
        .map_err(io_err(&memory_path))?;
    let state_path = dir.join(STATE_FILE);
    create_private(&state_path)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_data()
        })
        .map_err(io_err(&state_path))?;
    // The files' names too: a crash now leaves the directory as it is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(Saved {
        path: dir.to_path_buf(),
        state_bytes: bytes.len() as u64,
        memory_bytes: memory.len,
        memory_data_bytes: memory.data,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// A snapshot read back, checked, ready to be restored.
pub struct Snapshot {
    pub state: SnapshotState,
    /// The open memory file, its length checked against the configuration.
    pub memory: File,
}

/// Reads and checks the snapshot in `dir`: the state file's framing and contents, and that
/// the memory file is as large as the VM's memory.
pub fn load(dir: &Path) -> Result<Snapshot, LoadError> {
    let state_path = dir.join(STATE_FILE);
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Read { path, source }
    };
    let file = File::open(&state_path).map_err(read_err(&state_path))?;
    let len = file.metadata().map_err(read_err(&state_path))?.len();
    let limit = format::HEADER_LEN as u64 + format::MAX_PAYLOAD_LEN;
    if len > limit {
        return Err(LoadError::Format {
            path: state_path,
            reason: FormatError::TooLong(len),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(&file, limit), &mut bytes)
        .map_err(read_err(&state_path))?;
    let state: SnapshotState = format::decode(&bytes).map_err(|reason| LoadError::Format {
        path: state_path.clone(),
        reason,
    })?;
    let inconsistent = |what: String| LoadError::Inconsistent {
        path: dir.to_path_buf(),
        what,
    };
    let config = &state.config;
    if config.cpus == 0 || state.vcpus.len() != usize::from(config.cpus) {
        return Err(inconsistent(format!(
            "{} vCPUs configured, {} saved",
            config.cpus,
            state.vcpus.len()
        )));
    }
    let devices = config.devices.len();
    if state.virtio.len() != devices {
        return Err(inconsistent(format!(
            "{devices} virtio devices configured, {} saved",
            state.virtio.len()
        )));
    }
    let mem_size = config
        .memory_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| inconsistent(format!("{} MiB of memory", config.memory_mib)))?;
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::open(&memory_path).map_err(read_err(&memory_path))?;
    let memory_len = memory.metadata().map_err(read_err(&memory_path))?.len();
    if memory_len != mem_size {
        return Err(inconsistent(format!(
            "the memory file holds {memory_len} bytes, the VM has {} MiB ({mem_size} bytes)",
            config.memory_mib
        )));
    }
    Ok(Snapshot { state, memory })
}
