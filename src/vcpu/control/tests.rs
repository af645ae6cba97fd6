//! Pause, resume and stop on stand-in vCPU threads (no KVM).

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;
use std::time::Instant;

use super::*;

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
                let _in_loop = RunLoopGuard(control.clone());
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
        leaver.left_run_loop();
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
