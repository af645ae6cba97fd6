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
    pub(crate) fn left_run_loop(&self) {
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

    /// The VM is stopping: wakes the parked vCPUs (they then see the stop request and end)
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

/// Calls [`VcpuControl::left_run_loop`] when a vCPU thread leaves its run loop, panicking or not.
pub(crate) struct RunLoopGuard(pub(crate) Arc<VcpuControl>);

impl Drop for RunLoopGuard {
    fn drop(&mut self) {
        self.0.left_run_loop();
    }
}

#[cfg(test)]
mod tests;
