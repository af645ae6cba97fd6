//! The vCPU threads: one per vCPU, started before the VM exists (starting a thread takes a few
//! hundred microseconds on some hosts), each creating and configuring its vCPU as soon as it
//! is sent the VM, then running it once it is sent the buses; paused and resumed through
//! [`VcpuControl`]; stopped with one kick each.
//!
//! Pausing (`PUT /vm/pause`): the control sets a flag and kicks every vCPU thread once (the
//! kick sets `immediate_exit`, see [`crate::vcpu`]); each thread, back out of `KVM_RUN`, sees
//! the flag, tells KVM it is paused (`KVM_KVMCLOCK_CTRL`, so the guest's watchdogs do not call
//! the pause a soft lockup) and waits on a condition variable. The pause returns once every
//! running vCPU is parked. Resuming or stopping the VM wakes them.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boot::loader::EntryPoint;
use devices::IoBuses;
use vm_memory::GuestMemoryMmap;

use crate::exit::VmExit;
use crate::exit_stats::{ExitStats, VcpuExitStats};
use crate::snapshot::state::VcpuState;
use crate::vcpu::{self, Vcpu};
use crate::vm::Vm;
use crate::{cpuid, timeline};

/// How long a pause waits for every vCPU to park before it gives up (a vCPU thread can be
/// held up in a device, e.g. writing guest output to a stdout nobody reads).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a pause or resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM is stopping")]
    Stopping,
    #[error(
        "only {parked} of {running} vCPUs stopped within {timeout:?} (a vCPU thread is held up \
         in a device, e.g. writing to a full stdout); the VM keeps running, try again"
    )]
    Timeout {
        parked: usize,
        running: usize,
        timeout: Duration,
    },
    #[error("only {done} of {parked} parked vCPUs did their part within {timeout:?}")]
    TaskTimeout {
        done: usize,
        parked: usize,
        timeout: Duration,
    },
}

#[derive(Debug, Default)]
struct ControlState {
    /// A pause is requested or in effect.
    paused: bool,
    /// vCPU threads waiting in [`VcpuControl::park`].
    parked: usize,
    /// vCPU threads in their run loop.
    running: usize,
    /// The VM is stopping: nothing parks any more, and no thread is kicked.
    stopping: bool,
    /// The running vCPU threads, to kick; emptied before they are joined.
    threads: Vec<libc::pthread_t>,
    /// Work for the parked threads ([`VcpuControl::run_on_parked`]), numbered so that each
    /// thread runs each task once.
    task: Option<Task>,
    task_number: u64,
    /// Threads that have run the current task.
    task_done: usize,
}

/// Work a parked vCPU thread does on its own vCPU (a snapshot reads each vCPU's state there:
/// the thread owns the vCPU).
pub type ParkedTask = Arc<dyn Fn(&Vcpu) + Send + Sync>;

/// A posted [`ParkedTask`].
#[derive(Clone)]
struct Task(ParkedTask);

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Task")
    }
}

/// Pause, resume and stop for the vCPU threads, shared by them and the API.
#[derive(Debug, Default)]
pub struct VcpuControl {
    /// Read by every vCPU thread at each exit, so it is an atomic outside the lock.
    pause_requested: AtomicBool,
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the calling vCPU thread should [`park`](Self::park) before it enters the guest
    /// again.
    pub fn should_park(&self) -> bool {
        self.pause_requested.load(Ordering::SeqCst)
    }

    /// Parks the calling vCPU thread until the VM is resumed or stopped; `on_park` runs first
    /// (it tells KVM the vCPU is paused). While parked, the thread passes each task of
    /// [`run_on_parked`](Self::run_on_parked) to `run_task`, once.
    pub fn park(&self, on_park: impl FnOnce(), run_task: impl Fn(&ParkedTask)) {
        on_park();
        let mut state = self.lock();
        state.parked += 1;
        self.changed.notify_all();
        // Tasks are posted only while every thread is parked: none is pending now.
        let mut seen = state.task_number;
        while state.paused && !state.stopping {
            match state.task.clone() {
                Some(Task(task)) if state.task_number != seen => {
                    seen = state.task_number;
                    drop(state);
                    run_task(&task);
                    state = self.lock();
                    state.task_done += 1;
                    self.changed.notify_all();
                }
                _ => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
        state.parked -= 1;
    }

    /// Has every vCPU thread run `task` on its vCPU, and waits until all have, at most
    /// `timeout`. Only while the VM is paused (every running vCPU parked).
    pub fn run_on_parked(&self, task: ParkedTask, timeout: Duration) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.stopping {
            return Err(ControlError::Stopping);
        }
        if !state.paused || state.parked < state.running {
            return Err(ControlError::NotPaused);
        }
        state.task = Some(Task(task));
        state.task_number += 1;
        state.task_done = 0;
        self.changed.notify_all();
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.task_done < s.parked && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        state.task = None;
        if state.stopping {
            return Err(ControlError::Stopping);
        }
        if state.task_done < state.parked {
            return Err(ControlError::TaskTimeout {
                done: state.task_done,
                parked: state.parked,
                timeout,
            });
        }
        Ok(())
    }

    /// A vCPU thread left its run loop for good.
    fn exited(&self) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Whether the VM is paused (or a pause is under way).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Stops every vCPU outside `KVM_RUN`: sets the flag, kicks each running vCPU thread
    /// once with `kick`, and waits until all of them are parked, at most `timeout` (then
    /// the pause is undone).
    pub fn pause(
        &self,
        timeout: Duration,
        kick: impl Fn(libc::pthread_t),
    ) -> Result<(), ControlError> {
        let mut state = self.lock();
        if state.stopping {
            return Err(ControlError::Stopping);
        }
        if state.paused {
            return Err(ControlError::AlreadyPaused);
        }
        state.paused = true;
        self.pause_requested.store(true, Ordering::SeqCst);
        // Kicked under the lock, so `stop` cannot join a thread between here and the kick.
        for &thread in &state.threads {
            kick(thread);
        }
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.parked < s.running && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        if state.stopping {
            return Err(ControlError::Stopping);
        }
        if state.parked < state.running {
            let (parked, running) = (state.parked, state.running);
            state.paused = false;
            self.pause_requested.store(false, Ordering::SeqCst);
            self.changed.notify_all();
            return Err(ControlError::Timeout {
                parked,
                running,
                timeout,
            });
        }
        Ok(())
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.lock();
        if !state.paused {
            return Err(ControlError::NotPaused);
        }
        state.paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
        Ok(())
    }

    /// The VM is stopping: wakes the parked vCPUs (they then see the exit request and end)
    /// and forgets the threads, which are about to be joined.
    fn stop(&self) -> Vec<libc::pthread_t> {
        let mut state = self.lock();
        state.stopping = true;
        state.paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
        std::mem::take(&mut state.threads)
    }

    /// The vCPUs park before their first entry into the guest (a VM restored paused).
    fn start_paused(&self) {
        let mut state = self.lock();
        state.paused = true;
        self.pause_requested.store(true, Ordering::SeqCst);
    }

    /// The vCPU threads about to run.
    fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        let mut state = self.lock();
        state.running = threads.len();
        state.threads = threads;
    }
}

/// Calls [`VcpuControl::exited`] when a vCPU thread leaves its run loop, panicking or not.
struct ExitedGuard(Arc<VcpuControl>);

impl Drop for ExitedGuard {
    fn drop(&mut self) {
        self.0.exited();
    }
}

/// Sends the kick signal to a vCPU thread (see [`crate::vcpu`]).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread that has not been joined yet (VcpuControl hands out
    // threads only until `stop`, which runs before the join), so its pthread_t is valid; the
    // signal's handler is installed before any vCPU thread starts.
    let rc = unsafe { libc::pthread_kill(thread, vcpu::kick_signal()) };
    if rc != 0 {
        log::warn!(
            "cannot kick a vCPU thread: {}",
            io::Error::from_raw_os_error(rc)
        );
    }
}

/// What a vCPU thread is sent to run.
struct Go {
    io: Arc<IoBuses>,
    stats: Arc<VcpuExitStats>,
    control: Arc<VcpuControl>,
}

/// How a vCPU starts.
pub enum Start {
    /// At the kernel's entry point (the boot processor) or waiting for the guest's INIT/SIPI
    /// (the others).
    Boot(EntryPoint),
    /// Where a snapshot left it; `xsave_fits` as [`crate::snapshot::state::restore_vcpu`]
    /// takes it.
    Restore {
        state: Box<VcpuState>,
        xsave_fits: bool,
    },
}

/// A vCPU thread, started before the VM exists. Sent the VM and how to start, it creates and
/// configures its vCPU and says how that went; sent the buses, it runs the vCPU. It ends
/// without running if either sender goes away first.
struct VcpuThread {
    index: u8,
    handle: JoinHandle<()>,
    setup: mpsc::Sender<(Arc<Vm>, Start)>,
    /// When the vCPU was configured (a restore sets the guest's clock relative to it).
    configured: mpsc::Receiver<Result<Instant, vcpu::Error>>,
    go: mpsc::Sender<Go>,
}

/// The vCPU threads not yet let run; dropped (on an error path), they end and are joined.
pub struct VcpuThreads(Vec<VcpuThread>, Option<Instant>);

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            drop(thread.setup);
            drop(thread.go);
            if thread.handle.join().is_err() {
                log::error!("vCPU thread {} panicked", thread.index);
            }
        }
    }
}

impl VcpuThreads {
    /// Waits until every vCPU is configured (or one failed: its error); returns when vCPU 0
    /// was.
    pub fn wait_configured(&mut self) -> Result<Instant, vcpu::Error> {
        if let Some(first) = self.1 {
            return Ok(first);
        }
        let mut first = None;
        for thread in &self.0 {
            // A closed channel: the thread ended (panicked) before it could say.
            let result = thread.configured.recv().unwrap_or(Err(vcpu::Error::Thread {
                index: thread.index,
            }));
            first.get_or_insert(result?);
        }
        let first = first.unwrap_or_else(Instant::now);
        self.1 = Some(first);
        timeline::mark("vCPUs configured");
        Ok(first)
    }

    /// Sends every thread the VM and the kernel's entry point (for vCPU 0, the boot processor).
    pub fn setup(&self, vm: &Arc<Vm>, entry: EntryPoint) {
        for thread in &self.0 {
            // A thread that is gone says why when it is waited for.
            let _ = thread.setup.send((vm.clone(), Start::Boot(entry)));
        }
    }

    /// Sends every thread the VM and its vCPU's saved state, in order (one state per thread).
    pub fn restore(&self, vm: &Arc<Vm>, states: Vec<VcpuState>, xsave_fits: bool) {
        for (thread, state) in self.0.iter().zip(states) {
            let start = Start::Restore {
                state: Box::new(state),
                xsave_fits,
            };
            let _ = thread.setup.send((vm.clone(), start));
        }
    }
}

/// Starts one thread per vCPU; vCPU 0 is the boot processor. Each installs its seccomp filter
/// from `seccomp` (None: `--no-seccomp`) once its vCPU is set up.
pub fn spawn(
    mem: &GuestMemoryMmap,
    exit: &Arc<VmExit>,
    cpus: u8,
    seccomp: Option<Arc<crate::seccomp::Filters>>,
) -> io::Result<VcpuThreads> {
    let mut threads = VcpuThreads(Vec::with_capacity(usize::from(cpus)), None);
    for index in 0..cpus {
        let (mem, exit, seccomp) = (mem.clone(), exit.clone(), seccomp.clone());
        let (setup, setup_rx) = mpsc::channel::<(Arc<Vm>, Start)>();
        let (configured_tx, configured) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<Go>();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let Ok((vm, start)) = setup_rx.recv() else {
                    return;
                };
                let vcpu = Vcpu::new(&vm.fd, index).and_then(|mut vcpu| {
                    match start {
                        Start::Boot(entry) => {
                            let cpuid = cpuid::normalize(&vm.supported_cpuid, index, cpus);
                            vcpu.configure(&cpuid, (index == 0).then_some(entry))?;
                        }
                        Start::Restore { state, xsave_fits } => vcpu.restore(&state, xsave_fits)?,
                    }
                    Ok(vcpu)
                });
                drop(vm);
                // The filter goes on as soon as the vCPU is set up, while the main thread
                // still builds the devices: off the path to the first entry.
                let vcpu = vcpu.and_then(|vcpu| match &seccomp {
                    Some(filters) => filters
                        .install(crate::seccomp::ThreadKind::Vcpu, &format!("vcpu{index}"))
                        .map(|()| vcpu)
                        .map_err(|e| vcpu::Error::Seccomp {
                            index,
                            message: e.to_string(),
                        }),
                    None => Ok(vcpu),
                });
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
                let Ok(Go { io, stats, control }) = go_rx.recv() else {
                    return;
                };
                let _exited = ExitedGuard(control.clone());
                if index == 0 {
                    timeline::mark("first vCPU entry");
                }
                vcpu.run(vcpu::RunContext {
                    io,
                    mem,
                    exit,
                    control,
                    stats,
                })
            });
        match spawned {
            Ok(handle) => threads.0.push(VcpuThread {
                index,
                handle,
                setup,
                configured,
                go,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(threads)
}

/// The running vCPU threads.
pub struct Vcpus {
    handles: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

impl Vcpus {
    /// Their pause/resume control, for the API.
    pub fn control(&self) -> Arc<VcpuControl> {
        self.control.clone()
    }
}

/// Waits until every vCPU is configured, then lets them all run, each counting its exits in
/// `stats` (or, with `paused`, has them park before their first entry, as after a pause); on
/// any failure, ends them all without running and returns the first error.
pub fn start(
    mut threads: VcpuThreads,
    io: &Arc<IoBuses>,
    stats: &ExitStats,
    paused: bool,
) -> Result<Vcpus, vcpu::Error> {
    threads.wait_configured()?;
    let control = Arc::new(VcpuControl::default());
    if paused {
        control.start_paused();
    }
    let threads = std::mem::take(&mut threads.0);
    control.set_threads(threads.iter().map(|t| t.handle.as_pthread_t()).collect());
    let handles = threads
        .into_iter()
        .map(|thread| {
            let go = stats.vcpu(usize::from(thread.index)).map(|stats| Go {
                io: io.clone(),
                stats,
                control: control.clone(),
            });
            // A thread that is gone has already said why through `configured`; one without
            // counters (cannot happen: one per vCPU) ends without running.
            if let Some(go) = go {
                let _ = thread.go.send(go);
            }
            thread.handle
        })
        .collect();
    Ok(Vcpus { handles, control })
}

/// Wakes parked vCPUs and kicks every vCPU thread out of `KVM_RUN` once (the exit reason is
/// already recorded, and the kick sets `immediate_exit`: see [`crate::vcpu`]), then joins
/// them.
pub fn stop(vcpus: Vcpus) {
    let running = vcpus.control.stop();
    for (&thread, handle) in running.iter().zip(&vcpus.handles) {
        if !handle.is_finished() {
            kick(thread);
        }
    }
    for thread in vcpus.handles {
        if thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    /// Threads that stand in for vCPUs: they loop, counting, and park when asked.
    struct FakeVcpus {
        control: Arc<VcpuControl>,
        stop: Arc<AtomicBool>,
        progress: Arc<Vec<AtomicUsize>>,
        parks: Arc<AtomicUsize>,
        /// Parked-thread tasks run (the fakes have no vCPU to hand the task).
        tasks: Arc<AtomicUsize>,
        handles: Vec<JoinHandle<()>>,
    }

    fn fake_vcpus(n: usize) -> FakeVcpus {
        let control = Arc::new(VcpuControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let parks = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (control, stop, progress, parks, tasks) = (
                    control.clone(),
                    stop.clone(),
                    progress.clone(),
                    parks.clone(),
                    tasks.clone(),
                );
                std::thread::spawn(move || {
                    let _exited = ExitedGuard(control.clone());
                    while !stop.load(Ordering::SeqCst) {
                        if control.should_park() {
                            control.park(
                                || {
                                    parks.fetch_add(1, Ordering::SeqCst);
                                },
                                |_task| {
                                    tasks.fetch_add(1, Ordering::SeqCst);
                                },
                            );
                            continue;
                        }
                        progress[i].fetch_add(1, Ordering::SeqCst);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        control.set_threads(handles.iter().map(|h| h.as_pthread_t()).collect());
        FakeVcpus {
            control,
            stop,
            progress,
            parks,
            tasks,
            handles,
        }
    }

    impl FakeVcpus {
        fn snapshot(&self) -> Vec<usize> {
            self.progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .collect()
        }

        fn end(self) {
            self.stop.store(true, Ordering::SeqCst);
            self.control.stop();
            for h in self.handles {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn pause_parks_every_thread_and_resume_lets_them_go_on() {
        let vcpus = fake_vcpus(3);
        let kicked = AtomicUsize::new(0);
        vcpus
            .control
            .pause(Duration::from_secs(5), |_| {
                kicked.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        assert_eq!(kicked.load(Ordering::SeqCst), 3, "each thread kicked once");
        assert_eq!(vcpus.parks.load(Ordering::SeqCst), 3);
        assert!(vcpus.control.is_paused());
        let before = vcpus.snapshot();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(vcpus.snapshot(), before, "no progress while paused");

        assert_eq!(
            vcpus.control.pause(Duration::from_secs(1), |_| {}),
            Err(ControlError::AlreadyPaused)
        );
        vcpus.control.resume().unwrap();
        assert_eq!(vcpus.control.resume(), Err(ControlError::NotPaused));
        let deadline = Instant::now() + Duration::from_secs(5);
        while vcpus
            .snapshot()
            .iter()
            .zip(&before)
            .any(|(now, b)| now <= b)
        {
            assert!(Instant::now() < deadline, "threads did not resume");
            std::thread::yield_now();
        }
        vcpus.end();
    }

    #[test]
    fn every_parked_thread_runs_each_task_once_and_only_while_paused() {
        let vcpus = fake_vcpus(3);
        let task: ParkedTask = Arc::new(|_| {});
        assert_eq!(
            vcpus
                .control
                .run_on_parked(task.clone(), Duration::from_secs(5)),
            Err(ControlError::NotPaused)
        );
        vcpus.control.pause(Duration::from_secs(5), |_| {}).unwrap();
        for round in 1..=3 {
            vcpus
                .control
                .run_on_parked(task.clone(), Duration::from_secs(5))
                .unwrap();
            assert_eq!(vcpus.tasks.load(Ordering::SeqCst), 3 * round);
        }
        // Still parked: no progress.
        let before = vcpus.snapshot();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vcpus.snapshot(), before);
        vcpus.control.resume().unwrap();
        vcpus.end();
    }

    #[test]
    fn stopping_wakes_parked_threads() {
        let vcpus = fake_vcpus(2);
        vcpus.control.pause(Duration::from_secs(5), |_| {}).unwrap();
        // Joining would hang if the parked threads were not woken.
        vcpus.end();
    }

    #[test]
    fn a_thread_that_never_parks_makes_the_pause_time_out_and_undo_itself() {
        let control = VcpuControl::default();
        control.set_threads(vec![]);
        control.lock().running = 1; // a "vCPU" that never comes back
        let err = control
            .pause(Duration::from_millis(20), |_| {})
            .unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::Timeout {
                    parked: 0,
                    running: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("the VM keeps running"), "{err}");
        assert!(!control.is_paused() && !control.should_park());
    }

    #[test]
    fn a_thread_that_exits_during_a_pause_does_not_hold_it_up() {
        let control = Arc::new(VcpuControl::default());
        control.set_threads(vec![]);
        control.lock().running = 1;
        let leaver = control.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            leaver.exited();
        });
        control.pause(Duration::from_secs(5), |_| {}).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn no_pause_once_stopping() {
        let control = VcpuControl::default();
        control.stop();
        assert_eq!(
            control.pause(Duration::from_secs(1), |_| {}),
            Err(ControlError::Stopping)
        );
    }
}
