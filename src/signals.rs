//! Signals: SIGINT and SIGTERM become an event on the event loop (the handler only writes
//! to an eventfd, which is async-signal-safe), and a real-time signal kicks vCPU threads
//! out of `KVM_RUN` when the VM stops.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The eventfd the SIGINT/SIGTERM handler writes to (-1 before `install`).
static SIGNAL_EVT_FD: AtomicI32 = AtomicI32::new(-1);
/// The last SIGINT/SIGTERM received (0 for none).
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(num: c_int, _: *mut siginfo_t, _: *mut c_void) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_EVT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live u64 on our stack.
        unsafe { libc::write(fd, &one as *const u64 as *const c_void, 8) };
    }
}

extern "C" fn on_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // Nothing to do: delivering the signal makes KVM_RUN return with EINTR.
}

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// Installs the handlers; returns the eventfd that becomes readable on SIGINT/SIGTERM.
pub fn install() -> io::Result<EventFd> {
    let evt = EventFd::new(EFD_NONBLOCK)?;
    let fd = evt.try_clone()?;
    // The clone's descriptor stays open for the life of the process (leaked on purpose:
    // the handler may run at any time).
    SIGNAL_EVT_FD.store(std::os::fd::AsRawFd::as_raw_fd(&fd), Ordering::SeqCst);
    std::mem::forget(fd);
    for num in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(num, on_terminate).map_err(io::Error::from)?;
    }
    register_signal_handler(kick_signal(), on_kick).map_err(io::Error::from)?;
    Ok(evt)
}

/// The last SIGINT/SIGTERM received, if any.
pub fn last_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
