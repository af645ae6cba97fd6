//! The boot timeline (`--timings`): milliseconds since the VMM started, for each phase of
//! start-up and for each milestone a guest marks on the debug port, printed on stderr.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Records the process start; call first thing in `main`.
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Turns printing on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Milliseconds since `start()`.
fn elapsed_ms() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

/// Prints `event` with the time since start, when the timeline is enabled.
pub fn mark(event: &str) {
    if ENABLED.load(Ordering::Relaxed) {
        eprintln!("[vmm {:>10.3} ms] {event}", elapsed_ms());
    }
}
