//! Snapshot and restore: a paused VM written to a directory (`PUT /vm/snapshot`), and a new
//! VMM process that starts from it (`vmm --restore DIR`) where the guest was paused.
//!
//! A snapshot directory holds two files:
//! - [`STATE_FILE`]: everything but guest memory ([`state::VmState`]: the configuration, every
//!   vCPU, the VM's interrupt controllers, PIT and clock, the serial port, each virtio
//!   device's transport registers and queues), framed by [`format`] (magic, format version,
//!   length, CRC-32);
//! - [`MEMORY_FILE`]: guest RAM as a sparse file ([`memory`]), mapped `MAP_PRIVATE` on restore,
//!   so a restore copies no memory and VMs restored from one snapshot share its page cache.
//!
//! Disks and TAPs are not copied: the restored VM opens them again by their paths and names,
//! with the usual locking and errors. A snapshot is consistent because it is taken with every
//! vCPU parked, on the event-loop thread that runs the devices' queues: no device and no vCPU
//! changes guest memory or device state while it is written.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::serial::SerialDevice;
use devices::virtio::mmio::MmioTransport;
use kvm_ioctls::Cap;
use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use crate::vcpus::{ParkedTask, VcpuControl};
use crate::vm::Vm;
use format::FormatError;
use state::{SavedConfig, VcpuState, VmState};

pub mod format;
pub mod memory;
pub mod state;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// How long the parked vCPU threads have to read their state.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest XSAVE area a snapshot carries: `struct kvm_xsave`, what `KVM_GET_XSAVE` fills
/// (`KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` says how large this host's is).
pub const XSAVE_LEN: i32 = 4096;

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the VM is running: pause it first (PUT /vm/pause)")]
    Running,
    #[error("{0} exists and is not an empty directory: give a new or an empty directory")]
    NotEmpty(PathBuf),
    #[error("cannot write the snapshot to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the VM's state: {0}")]
    State(String),
    #[error(transparent)]
    Format(#[from] FormatError),
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

/// What a snapshot is taken from: the running VM's parts, handed to the API.
pub struct Source {
    pub vm: Arc<Vm>,
    pub mem: GuestMemoryMmap,
    pub control: Arc<VcpuControl>,
    pub config: SavedConfig,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Every virtio device's transport, in slot order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub guest_code: Arc<AtomicU16>,
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

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(dir).map_err(io_err),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Err(SaveError::NotEmpty(dir.to_path_buf()))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Reads every vCPU's state on its own (parked) thread; also says when vCPU 0's was read.
fn save_vcpus(src: &Source) -> Result<(Vec<VcpuState>, Instant), SaveError> {
    let msr_indices = src
        .vm
        .kvm
        .get_msr_index_list()
        .map_err(|e| SaveError::State(format!("KVM_GET_MSR_INDEX_LIST failed: {e}")))?
        .as_slice()
        .to_vec();
    let cpus = usize::from(src.config.cpus);
    // One slot per vCPU, filled by its thread.
    type Results = Mutex<Vec<Option<Result<(VcpuState, Instant), String>>>>;
    let results: Arc<Results> = Arc::new(Mutex::new((0..cpus).map(|_| None).collect()));
    let task: ParkedTask = {
        let results = results.clone();
        Arc::new(move |vcpu| {
            let result = state::save_vcpu(&vcpu.fd, &vcpu.cpuid, &msr_indices)
                .map(|state| (state, Instant::now()))
                .map_err(|e| e.to_string());
            if let Some(slot) = lock(&results).get_mut(usize::from(vcpu.index)) {
                *slot = Some(result);
            }
        })
    };
    src.control
        .run_on_parked(task, VCPU_SAVE_TIMEOUT)
        .map_err(|e| match e {
            crate::vcpus::ControlError::NotPaused => SaveError::Running,
            e => SaveError::State(e.to_string()),
        })?;
    let mut results = lock(&results);
    let mut first_read = None;
    let states = results
        .iter_mut()
        .enumerate()
        .map(|(i, r)| match r.take() {
            Some(Ok((state, at))) => {
                first_read.get_or_insert(at);
                Ok(state)
            }
            Some(Err(e)) => Err(SaveError::State(format!("vCPU {i}: {e}"))),
            None => Err(SaveError::State(format!("vCPU {i} did not answer"))),
        })
        .collect::<Result<_, _>>()?;
    Ok((states, first_read.unwrap_or_else(Instant::now)))
}

/// Writes a snapshot of the paused VM `src` into `dir` (created if missing; it must be
/// empty).
pub fn save(src: &Source, dir: &Path) -> Result<Saved, SaveError> {
    let started = std::time::Instant::now();
    if !src.control.is_paused() {
        return Err(SaveError::Running);
    }
    if src.vm.kvm.check_extension_int(Cap::Xsave2) > XSAVE_LEN {
        return Err(SaveError::State(state::XSAVE_TOO_LARGE.into()));
    }
    prepare_dir(dir)?;
    let (vcpus, tsc_read_at) = save_vcpus(src)?;
    let vm =
        state::save_vm(&src.vm.fd, tsc_read_at).map_err(|e| SaveError::State(e.to_string()))?;
    let serial = lock(&src.serial).state();
    let virtio = src.transports.iter().map(|t| lock(t).state()).collect();
    let state = VmState {
        config: src.config.clone(),
        vm,
        vcpus,
        serial,
        virtio,
        guest_exit_code: devices::power::GuestExitCode::read(&src.guest_code),
    };
    let bytes = format::encode(&state)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SaveError::Io { path, source }
    };
    // The memory file first: a directory with a state file holds a whole snapshot.
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::create_new(&memory_path)
        .and_then(|file| memory::save(&src.mem, &file))
        .map_err(io_err(&memory_path))?;
    let state_path = dir.join(STATE_FILE);
    File::create_new(&state_path)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_data()
        })
        .map_err(io_err(&state_path))?;
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
    pub state: VmState,
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
    let state: VmState = format::decode(&bytes).map_err(|reason| LoadError::Format {
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
    let devices = config.disks.len() + config.nets.len();
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
