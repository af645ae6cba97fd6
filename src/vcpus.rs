//! The vCPU threads, one per vCPU, behind one handle: [`Vcpus`].
//!
//! The threads start before the VM exists (starting a thread takes a few hundred microseconds
//! on some hosts). Each is then sent the VM and how to start ([`Vcpus::setup`] for a boot,
//! [`Vcpus::restore`] for a snapshot), creates and configures its vCPU while the main thread
//! builds the devices, and waits; [`Vcpus::start`] lets them all run. Each runs its vCPU
//! until the VM stops, parking while the VM is paused ([`VcpuControl`]).
//!
//! Dropping the handle stops every thread (one kick each, see [`crate::vcpu`]) and joins it,
//! whether the VM ran or set-up failed half-way: no vCPU thread outlives its `Vcpus`.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use boot::loader::EntryPoint;
use devices::{IoBuses, Persist};
use vm_memory::GuestMemoryMmap;

use crate::exit_stats::{ExitStats, VcpuExitStats};
use crate::stop::{StopReason, VmStop};
use crate::vcpu::control::{RunLoopGuard, VcpuControl};
use crate::vcpu::state::VcpuState;
use crate::vcpu::{self, Vcpu};
use crate::vm::Vm;
use crate::{cpuid, timeline};

/// How a vCPU starts.
enum Start {
    /// At the kernel's entry point (the boot processor) or waiting for the guest's INIT/SIPI
    /// (the others).
    Boot(EntryPoint),
    /// Where a snapshot left it.
    Restore(Box<VcpuState>),
}

/// What a configured vCPU's thread is sent to run.
struct Go {
    io: Arc<IoBuses>,
    stats: Arc<VcpuExitStats>,
}

/// One vCPU thread as the handle sees it. It ends without running if a sender goes away
/// before it was used.
struct Thread {
    index: u8,
    handle: JoinHandle<()>,
    setup: Option<mpsc::Sender<(Arc<Vm>, Start)>>,
    /// When the vCPU was configured (a restore sets the guest's clock relative to it).
    configured: mpsc::Receiver<Result<Instant, vcpu::Error>>,
    go: Option<mpsc::Sender<Go>>,
}

/// Every vCPU thread of the VM. Dropped, it stops and joins them.
pub struct Vcpus {
    threads: Mutex<Vec<Thread>>,
    control: Arc<VcpuControl>,
    stop: Arc<VmStop>,
    /// When vCPU 0 was configured, once every vCPU was.
    configured_at: Option<Instant>,
}

impl Vcpus {
    /// Starts one thread per vCPU; vCPU 0 is the boot processor. Each installs its seccomp
    /// filter from `seccomp` (None: `--no-seccomp`) once its vCPU is set up, and records why
    /// the VM must stop in `stop` when its vCPU says so.
    pub fn spawn(
        mem: &GuestMemoryMmap,
        stop: &Arc<VmStop>,
        cpus: u8,
        seccomp: Option<Arc<crate::seccomp::Filters>>,
    ) -> io::Result<Vcpus> {
        let control = Arc::new(VcpuControl::default());
        let mut vcpus = Vcpus {
            threads: Mutex::new(Vec::with_capacity(usize::from(cpus))),
            control: control.clone(),
            stop: stop.clone(),
            configured_at: None,
        };
        for index in 0..cpus {
            let (mem, stop, control, seccomp) =
                (mem.clone(), stop.clone(), control.clone(), seccomp.clone());
            let (setup, setup_rx) = mpsc::channel::<(Arc<Vm>, Start)>();
            let (configured_tx, configured) = mpsc::channel();
            let (go, go_rx) = mpsc::channel::<Go>();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let Ok((vm, start)) = setup_rx.recv() else {
                        return;
                    };
                    let vcpu = set_up(&vm, index, cpus, start, seccomp.as_deref());
                    drop(vm);
                    let vcpu = match vcpu {
                        Ok(vcpu) => {
                            let _ = configured_tx.send(Ok(Instant::now()));
                            vcpu
                        }
                        Err(e) => {
                            let _ = configured_tx.send(Err(e));
                            return;
                        }
                    };
                    let Ok(go) = go_rx.recv() else {
                        return;
                    };
                    stop_on_panic(index, &stop, || run(vcpu, go, &mem, &stop, control));
                })?;
            vcpus
                .threads
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .push(Thread {
                    index,
                    handle,
                    setup: Some(setup),
                    configured,
                    go: Some(go),
                });
        }
        Ok(vcpus)
    }

    fn threads(&mut self) -> &mut Vec<Thread> {
        self.threads.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends every thread the VM and the kernel's entry point (for vCPU 0, the boot processor).
    pub fn setup(&mut self, vm: &Arc<Vm>, entry: EntryPoint) {
        for thread in self.threads() {
            if let Some(setup) = thread.setup.take() {
                // A thread that is gone says why when it is waited for.
                let _ = setup.send((vm.clone(), Start::Boot(entry)));
            }
        }
    }

    /// Sends every thread the VM and its vCPU's saved state, in order (one state per thread).
    pub fn restore(&mut self, vm: &Arc<Vm>, states: Vec<VcpuState>) {
        for (thread, state) in self.threads().iter_mut().zip(states) {
            if let Some(setup) = thread.setup.take() {
                let _ = setup.send((vm.clone(), Start::Restore(Box::new(state))));
            }
        }
    }

    /// Waits until every vCPU is configured (or one failed: its error); returns when vCPU 0
    /// was.
    pub fn wait_configured(&mut self) -> Result<Instant, vcpu::Error> {
        if let Some(first) = self.configured_at {
            return Ok(first);
        }
        let mut first = None;
        for thread in self.threads().iter() {
            // A closed channel: the thread ended (panicked) before it could say.
            let result = thread.configured.recv().unwrap_or(Err(vcpu::Error::Thread {
                index: thread.index,
            }));
            first.get_or_insert(result?);
        }
        let first = first.unwrap_or_else(Instant::now);
        self.configured_at = Some(first);
        timeline::mark("vCPUs configured");
        Ok(first)
    }

    /// Waits until every vCPU is configured, then lets them all run, each counting its exits in
    /// `stats` (or, with `paused`, has them park before their first entry, as after a pause).
    pub fn start(
        &mut self,
        io: &Arc<IoBuses>,
        stats: &ExitStats,
        paused: bool,
    ) -> Result<(), vcpu::Error> {
        self.wait_configured()?;
        if paused {
            self.control.start_paused();
        }
        let control = self.control.clone();
        let threads = self.threads();
        control.set_threads(threads.iter().map(|t| t.handle.as_pthread_t()).collect());
        for thread in threads {
            let go = stats.vcpu(usize::from(thread.index)).map(|stats| Go {
                io: io.clone(),
                stats,
            });
            // A thread that is gone has already said why through `configured`; one without
            // counters (cannot happen: one per vCPU) ends without running.
            if let (Some(sender), Some(go)) = (thread.go.take(), go) {
                let _ = sender.send(go);
            }
        }
        Ok(())
    }

    /// Pause and resume, for the API.
    pub fn control(&self) -> &Arc<VcpuControl> {
        &self.control
    }

    /// Stops every vCPU thread and joins it: wakes the parked ones, kicks every running one
    /// out of `KVM_RUN` once (the kick sets `immediate_exit`: see [`crate::vcpu`]), and lets
    /// the ones that never ran end. Idempotent.
    pub fn stop(&self) {
        let running = self.control.stop();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in &threads {
            if !thread.handle.is_finished() && running.contains(&thread.handle.as_pthread_t()) {
                vcpu::kick(thread.handle.as_pthread_t());
            }
        }
        for thread in threads {
            drop(thread.setup);
            drop(thread.go);
            if thread.handle.join().is_err() {
                log::error!("vCPU thread {} panicked", thread.index);
                if !self.stop.stopping() {
                    self.stop.request(crate::stop::StopReason::Error(format!(
                        "vCPU {} failed (its thread panicked)",
                        thread.index
                    )));
                }
            }
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates vCPU `index` of `cpus` in `vm`, configures it for `start`, and installs its
/// seccomp filter.
fn set_up(
    vm: &Vm,
    index: u8,
    cpus: u8,
    start: Start,
    seccomp: Option<&crate::seccomp::Filters>,
) -> Result<Vcpu, vcpu::Error> {
    let mut vcpu = Vcpu::new(vm, index)?;
    match start {
        Start::Boot(entry) => {
            let cpuid = cpuid::normalize(&vm.supported_cpuid, index, cpus);
            vcpu.configure(&cpuid, (index == 0).then_some(entry))?;
        }
        Start::Restore(state) => vcpu
            .restore(&state)
            .map_err(|source| vcpu::Error::Restore { index, source })?,
    }
    // The filter goes on as soon as the vCPU is set up, while the main thread still builds
    // the devices: off the path to the first entry.
    if let Some(filters) = seccomp {
        filters
            .install(crate::seccomp::ThreadKind::Vcpu, &format!("vcpu{index}"))
            .map_err(|source| vcpu::Error::Seccomp { index, source })?;
    }
    Ok(vcpu)
}

/// A vCPU thread's run loop: enters the guest until the VM stops, parking while it is paused.
/// A vCPU whose own exit asks the VM to stop records why and runs no more guest code; so does
/// one whose port write made a device ask (the device records the request on this thread,
/// before the write returns).
fn run(mut vcpu: Vcpu, go: Go, mem: &GuestMemoryMmap, stop: &VmStop, control: Arc<VcpuControl>) {
    let Go { io, stats } = go;
    let _in_loop = RunLoopGuard(control.clone());
    // Declared after `vcpu`, so dropped before it: the kick handler never sees a closed
    // vCPU's mapping.
    let _kick = vcpu.publish_for_kicks();
    if vcpu.index == 0 {
        timeline::mark("first vCPU entry");
    }
    loop {
        if stop.stopping() || control.should_stop() {
            return;
        }
        if control.should_park() {
            control.park(|| vcpu.tell_kvm_paused(), |task| task(&vcpu));
            continue;
        }
        if let Some(reason) = vcpu.run_once(&io, mem, &stats) {
            stop.request(reason);
            return;
        }
    }
}

/// Runs a vCPU thread's loop (`body`); if it panics (a bug in vmm, in a device reached from the
/// vCPU or in KVM's answers), the VM stops with the panic's message and exit code 1, rather
/// than going on without that vCPU. The panic itself is printed as Rust prints panics.
fn stop_on_panic(index: u8, stop: &VmStop, body: impl FnOnce()) {
    let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) else {
        return;
    };
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    stop.request(StopReason::Error(format!(
        "vCPU {index} panicked: {message}; the VM stops"
    )));
}

/// Reads every vCPU's state on its own thread (they must be parked: the VM paused); also says
/// when vCPU 0's was read (its TSC).
pub fn save_states(
    control: &VcpuControl,
    cpus: u8,
    timeout: std::time::Duration,
) -> Result<(Vec<VcpuState>, Instant), SaveError> {
    type Slots = Mutex<Vec<Option<Result<(VcpuState, Instant), vcpu::state::StateError>>>>;
    let slots: Arc<Slots> = Arc::new(Mutex::new((0..cpus).map(|_| None).collect()));
    let task: crate::vcpu::control::ParkedTask = {
        let slots = slots.clone();
        Arc::new(move |vcpu: &Vcpu| {
            let result = vcpu.save().map(|state| (state, Instant::now()));
            let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get_mut(usize::from(vcpu.index)) {
                *slot = Some(result);
            }
        })
    };
    control
        .run_on_parked(task, timeout)
        .map_err(SaveError::Control)?;
    let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
    let mut first_read = None;
    let mut states = Vec::with_capacity(slots.len());
    for (index, slot) in slots.iter_mut().enumerate() {
        match slot.take() {
            Some(Ok((state, at))) => {
                first_read.get_or_insert(at);
                states.push(state);
            }
            Some(Err(source)) => return Err(SaveError::Vcpu { index, source }),
            None => return Err(SaveError::NoAnswer { index }),
        }
    }
    Ok((states, first_read.unwrap_or_else(Instant::now)))
}

/// Why the vCPUs' states could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Control(crate::vcpu::control::ControlError),
    #[error("cannot read the state of vCPU {index}")]
    Vcpu {
        index: usize,
        #[source]
        source: vcpu::state::StateError,
    },
    #[error("vCPU {index} did not answer")]
    NoAnswer { index: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_vcpu_thread_stops_the_vm_with_its_message_and_exit_code_1() {
        let stop = VmStop::new().unwrap();
        stop_on_panic(3, &stop, || panic!("boom {}", 7));
        let reason = stop.reason().expect("the panic stops the VM");
        assert_eq!(reason.exit_code(None), 1);
        assert!(
            reason.to_string().contains("vCPU 3 panicked: boom 7"),
            "{reason}"
        );

        let stop = VmStop::new().unwrap();
        stop_on_panic(0, &stop, || panic!("a static message"));
        let reason = stop.reason().unwrap().to_string();
        assert!(
            reason.contains("vCPU 0 panicked: a static message"),
            "{reason}"
        );

        let stop = VmStop::new().unwrap();
        stop_on_panic(1, &stop, || {});
        assert!(
            stop.reason().is_none(),
            "a thread that ends normally stops nothing"
        );
    }
}
