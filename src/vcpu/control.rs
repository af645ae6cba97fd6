//! Pause, resume and stop for the vCPU threads ([`VcpuControl`]), shared by the threads, the
//! [`crate::vcpus::Vcpus`] handle and the API.
//!
//! Pausing (`PUT /vm/pause`): the control sets a flag and kicks every vCPU thread once (the
//! kick sets `immediate_exit`, see [`crate::vcpu`]); each thread, back out of `KVM_RUN`, sees
//! the flag, tells KVM it is paused (`KVM_KVMCLOCK_CTRL`, so the guest's watchdogs do not call
//! the pause a soft lockup) and waits on a condition variable. The pause returns once every
//! running vCPU is parked. Resuming or stopping the VM wakes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Vcpu;

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
    /// The vCPU threads are being stopped (also on an error path, where no stop reason is
    /// recorded): they leave their run loop at their next exit.
    stop_requested: AtomicBool,
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the calling vCPU thread should leave its run loop for good.
    pub fn should_stop(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
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
    pub(crate) fn exited(&self) {
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
    pub(crate) fn stop(&self) -> Vec<libc::pthread_t> {
        self.stop_requested.store(true, Ordering::SeqCst);
        let mut state = self.lock();
        state.stopping = true;
        state.paused = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
        std::mem::take(&mut state.threads)
    }

    /// The vCPUs park before their first entry into the guest (a VM restored paused).
    pub(crate) fn start_paused(&self) {
        let mut state = self.lock();
        state.paused = true;
        self.pause_requested.store(true, Ordering::SeqCst);
    }

    /// The vCPU threads about to run.
    pub(crate) fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        let mut state = self.lock();
        state.running = threads.len();
        state.threads = threads;
    }
}

/// Calls [`VcpuControl::exited`] when a vCPU thread leaves its run loop, panicking or not.
pub(crate) struct ExitedGuard(pub(crate) Arc<VcpuControl>);

impl Drop for ExitedGuard {
    fn drop(&mut self) {
        self.0.exited();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::thread::JoinHandleExt;
    use std::thread::JoinHandle;
    use std::time::Instant;

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
