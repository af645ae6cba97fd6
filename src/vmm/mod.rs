//! [`Vmm`]: the one owner of a running VM — the KVM VM, guest memory, the devices and the
//! vCPU threads — and its lifecycle.
//!
//! Two constructors build it: [`Vmm::boot`] (`boot.rs`, the boot story in order) and
//! [`Vmm::restore`] (`restore.rs`, the same from a snapshot). [`Vmm::run`] runs the event loop
//! on the calling thread, lets the vCPUs go, and returns once the VM stopped. While it runs,
//! the control API holds the `Vmm` and calls its lifecycle ([`api::Lifecycle`]): pause,
//! resume, snapshot, stop, status.
//!
//! The fields are dropped in order: the vCPU threads are stopped and joined first (dropping
//! [`Vcpus`] does that, on every path out, errors included), guest memory last.

mod boot;
mod devices;
mod error;
mod restore;
mod virtio;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::devices::power::GuestExitCode;
use ::devices::Persist;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;

use self::devices::Devices;
use crate::api::{self, Lifecycle, VmStatus};
use crate::exit_stats::{ExitSnapshot, ExitStats};
use crate::signals::SignalEvent;
use crate::snapshot::state::{SavedConfig, SnapshotState};
use crate::snapshot::{self, SaveError, Saved};
use crate::stop::{StopReason, VmStop};
use crate::vcpu::control::{ControlError, PAUSE_TIMEOUT};
use crate::vcpus::{self, Vcpus};
use crate::vm::{Vm, VmState};
use crate::{event_loop, timeline};

pub use error::Error;

/// How long the parked vCPU threads have to read their state for a snapshot.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the VM ended: why it stopped, and the exit code the guest chose, if it chose one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: StopReason,
    pub guest_code: Option<u8>,
}

impl Outcome {
    /// The process's exit code.
    pub fn exit_code(&self) -> u8 {
        self.reason.exit_code(self.guest_code)
    }
}

/// How the VMM runs the VM, besides what it is made of.
struct RunOptions {
    /// Where to serve the control API.
    api_socket: Option<PathBuf>,
    /// Print the exit statistics when the VM ends.
    exit_stats: bool,
    /// Start with the vCPUs parked (`--restore-paused`).
    paused: bool,
}

/// A VM and everything that runs it.
pub struct Vmm {
    /// First, so dropped first: stops and joins the vCPU threads.
    vcpus: Vcpus,
    devices: Devices,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    stop: Arc<VmStop>,
    stats: Arc<ExitStats>,
    /// What the VM is made of (a snapshot saves it).
    config: SavedConfig,
    options: RunOptions,
    /// SIGINT/SIGTERM, for the event loop (taken when it starts).
    signal_evt: Option<SignalEvent>,
    /// The seccomp filters (None: `--no-seccomp`); the vCPU threads have theirs already.
    filters: Option<Arc<crate::seccomp::Filters>>,
    /// A restored VM's saved clock, set once the vCPUs have their TSCs.
    restored_clock: Option<VmState>,
    /// When the vCPUs started.
    started: OnceLock<Instant>,
}

/// What boot and restore both build before the `Vmm` holds it.
struct Built {
    vcpus: Vcpus,
    devices: Devices,
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    stop: Arc<VmStop>,
    filters: Option<Arc<crate::seccomp::Filters>>,
    signal_evt: SignalEvent,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vmm {
    /// The owner of what boot or restore built: `config` is what the VM is made of,
    /// `restored_clock` a restored VM's saved clock.
    fn assemble(
        built: Built,
        config: SavedConfig,
        options: RunOptions,
        restored_clock: Option<VmState>,
    ) -> Vmm {
        let Built {
            vcpus,
            devices,
            vm,
            mem,
            stop,
            filters,
            signal_evt,
        } = built;
        let stats = Arc::new(ExitStats::new(
            usize::from(config.cpus),
            devices.io.pio.names(),
            devices.io.mmio.names(),
        ));
        Vmm {
            vcpus,
            devices,
            vm,
            mem,
            stop,
            stats,
            config,
            options,
            signal_evt: Some(signal_evt),
            filters,
            restored_clock,
            started: OnceLock::new(),
        }
    }

    /// Runs the VM until it stops: the event loop on this thread, the vCPUs on theirs, the API
    /// (with `--api-socket`) on the event loop. Any error after the vCPUs started stops them
    /// before it is returned.
    pub fn run(mut self) -> Result<Outcome, Error> {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(Error::EventLoop)?;
        if let Some(signal_evt) = self.signal_evt.take() {
            manager.add_subscriber(Arc::new(Mutex::new(event_loop::StopWatcher::new(
                self.stop.clone(),
                signal_evt,
            ))));
        }
        manager.add_subscriber(Arc::new(Mutex::new(event_loop::StdinInput::new(
            self.devices.serial.clone(),
        ))));
        for handler in std::mem::take(&mut self.devices.queue_handlers) {
            manager.add_subscriber(Arc::new(Mutex::new(handler)));
        }
        let _raw_mode = crate::terminal::RawModeGuard::new().map_err(|source| Error::Io {
            what: "the terminal (raw mode)",
            source,
        })?;
        let configured_at = self.vcpus.wait_configured()?;
        let restored = self.restored_clock.is_some();
        if let Some(saved) = self.restored_clock.take() {
            self.vm
                .restore_clock(&saved, configured_at)
                .map_err(Error::RestoreVm)?;
        }
        // The main thread's filter goes on before any work the guest drives: for a restored
        // VM before the first round below (its devices' queues may hold work); for a booted
        // one, whose devices hold none yet, just after the vCPUs start, off the path to the
        // first entry (installing it costs ~0.4 ms here).
        let mut api = None;
        if restored {
            api = Some(self.lock_down()?);
        }
        // What is already waiting (input typed before the start, a restored device's queue
        // notifications) is handled before the guest runs, not after the event loop's first
        // wake-up, which can come milliseconds after the vCPUs start.
        manager.run_with_timeout(0).map_err(Error::EventLoop)?;
        self.vcpus
            .start(&self.devices.io, &self.stats, self.options.paused)?;
        let _ = self.started.set(Instant::now());
        let (api_listener, _api_socket_file) = match api {
            Some(api) => api,
            None => self.lock_down()?,
        };
        let vmm = Arc::new(self);

        if let Some(listener) = api_listener {
            let server =
                api::ApiServer::new(listener, vmm.clone()).map_err(|source| Error::Io {
                    what: "the API server",
                    source,
                })?;
            manager.add_subscriber(Arc::new(Mutex::new(server)));
            timeline::mark("API socket listening");
        }
        while !vmm.stop.stopping() {
            manager.run().map_err(Error::EventLoop)?;
        }
        vmm.vcpus.stop();
        timeline::mark("guest exit");
        if vmm.options.exit_stats {
            eprint!("{}", vmm.stats.snapshot().table());
        }
        log::info!(
            "accesses to no device: {} port I/O (read as 0xff), {} MMIO",
            vmm.devices.io.pio.unhandled_accesses(),
            vmm.devices.io.mmio.unhandled_accesses()
        );
        let reason = vmm
            .stop
            .reason()
            .unwrap_or_else(|| StopReason::Error("the VM stopped for no recorded reason".into()));
        Ok(Outcome {
            reason,
            guest_code: GuestExitCode::read(&vmm.devices.guest_code),
        })
    }

    /// The main thread's last steps before its filter, then the filter: the API socket is
    /// bound (the filter allows no `bind`; the file is removed when the returned guard drops,
    /// however `run` ends), a stop signal held since `main` started is handed to the event
    /// loop, and the seccomp filter goes on.
    #[allow(clippy::type_complexity)]
    fn lock_down(
        &self,
    ) -> Result<
        (
            Option<std::os::unix::net::UnixListener>,
            Option<api::socket::SocketFile>,
        ),
        Error,
    > {
        let api = match &self.options.api_socket {
            None => (None, None),
            Some(path) => {
                let (listener, file) = api::socket::bind("--api-socket", path)?;
                (Some(listener), Some(file))
            }
        };
        crate::signals::release().map_err(|source| Error::Io {
            what: "signal handling",
            source,
        })?;
        if let Some(filters) = &self.filters {
            filters.install(crate::seccomp::ThreadKind::Main, "vmm")?;
            timeline::mark("seccomp filter installed on the main thread");
        }
        Ok(api)
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.vcpus.control().is_paused()
    }

    /// Writes a snapshot of the paused VM into `dir` (new, or empty).
    pub fn save_snapshot(&self, dir: &Path) -> Result<Saved, SaveError> {
        let started = Instant::now();
        if !self.is_paused() {
            return Err(SaveError::Running);
        }
        let shared_dir = |device: &_| matches!(device, crate::config::VirtioConfig::Fs(_));
        if self.config.devices.iter().any(shared_dir) {
            return Err(SaveError::SharedDirectory);
        }
        if !self.vm.xsave_fits {
            return Err(SaveError::XsaveTooLarge);
        }
        let (vcpus, tsc_read_at) =
            vcpus::save_states(self.vcpus.control(), self.config.cpus, VCPU_SAVE_TIMEOUT).map_err(
                |e| match e {
                    vcpus::SaveError::Control(ControlError::NotPaused) => SaveError::Running,
                    e => SaveError::Vcpus(e),
                },
            )?;
        let mut vm = self.vm.save().map_err(SaveError::Vm)?;
        vm.clock_read_after_tsc_ns =
            u64::try_from(tsc_read_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let serial = lock(&self.devices.serial).state();
        let virtio = self
            .devices
            .transports
            .iter()
            .map(|t| lock(t).state())
            .collect();
        // What the guest wrote reaches the disks before the snapshot says it did.
        let mut disks = Vec::with_capacity(self.devices.disks.len());
        for disk in &self.devices.disks {
            use std::os::unix::fs::MetadataExt;
            disk.sync_data().map_err(SaveError::DiskSync)?;
            let meta = disk.metadata().map_err(SaveError::DiskSync)?;
            disks.push(crate::snapshot::state::DiskIdentity {
                size: meta.len(),
                dev: meta.dev(),
                ino: meta.ino(),
            });
        }
        let state = SnapshotState {
            config: self.config.clone(),
            vm,
            vcpus,
            serial,
            virtio,
            guest_exit_code: GuestExitCode::read(&self.devices.guest_code),
            disks,
        };
        snapshot::save(dir, &state, &self.mem, started)
    }
}

impl Lifecycle for Vmm {
    fn status(&self) -> VmStatus {
        let started = self.started.get().copied().unwrap_or_else(Instant::now);
        VmStatus {
            state: if self.is_paused() {
                "paused"
            } else {
                "running"
            },
            uptime_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vcpus: self.config.cpus,
            memory_mib: self.config.memory_mib,
            devices: self.devices.infos.clone(),
            exits: self.stats.snapshot().summary(),
        }
    }

    fn exits(&self) -> ExitSnapshot {
        self.stats.snapshot()
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.vcpus.control().pause(PAUSE_TIMEOUT, crate::vcpu::kick)
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.vcpus.control().resume()
    }

    fn stop(&self) {
        self.stop.request(StopReason::ApiStop);
    }

    fn snapshot(&self, dir: &Path) -> Result<Saved, SaveError> {
        self.save_snapshot(dir)
    }
}
