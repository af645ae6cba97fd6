//! SIGINT and SIGTERM become an event on the event loop: signal-hook's handler records which
//! signal came and writes a byte to a socket whose other end the event loop polls. (The vCPU
//! kick signal is [`crate::vcpu`]'s.)

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The last SIGINT/SIGTERM received (0 for none).
static LAST_SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// The signals that stop the VM.
const STOP_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

/// Readable once SIGINT or SIGTERM has arrived.
#[derive(Debug)]
pub struct SignalEvent {
    wake: UnixStream,
}

impl SignalEvent {
    /// Consumes the wake-ups received so far and returns the last signal, if any.
    pub fn take(&mut self) -> Option<i32> {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        match LAST_SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            n => i32::try_from(n).ok(),
        }
    }
}

impl std::os::fd::AsRawFd for SignalEvent {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.wake.as_raw_fd()
    }
}

/// Blocks SIGINT and SIGTERM on the calling thread, and so on every thread it starts
/// afterwards: called first thing in `main`, so that a stop signal during set-up waits (as
/// pending) instead of killing the process with the default action or interrupting a set-up
/// call with `EINTR` (`KVM_CREATE_VM` fails so). [`release`] delivers it once the event loop is
/// there to see it; the vCPU threads keep it blocked.
pub fn hold() -> io::Result<()> {
    change_mask(libc::SIG_BLOCK)
}

/// Unblocks SIGINT and SIGTERM on the calling thread (the event loop's): one that came while
/// they were held is handled now.
pub fn release() -> io::Result<()> {
    change_mask(libc::SIG_UNBLOCK)
}

fn change_mask(how: libc::c_int) -> io::Result<()> {
    // SAFETY: an empty set filled with valid signal numbers, then pthread_sigmask on the
    // calling thread with no old set requested.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for num in STOP_SIGNALS {
            libc::sigaddset(&mut set, num);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Installs the handlers; returns the event that becomes readable on SIGINT/SIGTERM.
pub fn install() -> io::Result<SignalEvent> {
    let (wake, notify) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    for num in STOP_SIGNALS {
        // signal-hook runs a signal's actions in the order they were registered: the signal
        // is recorded before the event loop is woken.
        signal_hook::flag::register_usize(num, &LAST_SIGNAL, num as usize)?;
        signal_hook::low_level::pipe::register(num, notify.try_clone()?)?;
    }
    Ok(SignalEvent { wake })
}
