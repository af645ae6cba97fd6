//! SIGINT and SIGTERM stop vmm whenever they come.
//!
//! - While it sets up ([`hold`] to [`release`]) they are blocked on every thread, so that no
//!   set-up call fails with `EINTR` and the default action never kills vmm half-made; a
//!   watcher thread waits for them on a `signalfd`. One that comes ends vmm at once with exit
//!   code 0, whatever step the main thread is blocked in (a vhost-user socket that never
//!   accepts, a slow file system): the watcher removes the files set-up made so far
//!   ([`setup_files`]: socket files, private directories) and calls `_exit`; helper
//!   processes die with vmm (`PR_SET_PDEATHSIG`), and the kernel closes everything else.
//! - Once the event loop runs they are an event on it: signal-hook's handler records which
//!   signal came and writes a byte to a socket whose other end the event loop polls, and the
//!   VM stops cleanly (exit code 0).
//!
//! (The vCPU kick signal is [`crate::vcpu`]'s.)

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

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

/// Files set-up made, removed by a stop signal that comes before [`release`].
static SETUP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// The set-up watcher while it runs, and the eventfd that tells it set-up is over.
static SETUP_DONE: Mutex<Option<(EventFd, std::thread::JoinHandle<()>)>> = Mutex::new(None);

/// Blocks SIGINT and SIGTERM on the calling thread, and so on every thread it starts
/// afterwards, and starts the set-up watcher: called first thing in `main`. A stop signal
/// during set-up then neither kills the process with the default action nor interrupts a
/// set-up call with `EINTR` (`KVM_CREATE_VM` fails so): the watcher ends vmm cleanly.
/// [`release`] hands the signals over to the event loop; the vCPU threads keep them blocked.
pub fn hold() -> io::Result<()> {
    change_mask(libc::SIG_BLOCK)?;
    let set = stop_set();
    // SAFETY: a new signalfd for a valid set; the result is checked.
    let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };
    let done = EventFd::new(libc::EFD_CLOEXEC)?;
    let watched = done.try_clone()?;
    let watcher = std::thread::Builder::new()
        .name("vmm-setup".into())
        .spawn(move || watch_setup(sfd, watched))?;
    *SETUP_DONE.lock().unwrap_or_else(|e| e.into_inner()) = Some((done, watcher));
    Ok(())
}

/// What set-up makes, recorded for removal if a stop signal ends set-up: hold it while making
/// the files ([`SetupFiles::record`] each), so that the watcher, which takes the same lock
/// before it removes anything and keeps it until vmm has ended, never misses one that is being
/// made. Outside set-up it records nothing.
pub struct SetupFiles(Option<std::sync::MutexGuard<'static, Vec<PathBuf>>>);

impl SetupFiles {
    /// `path` (a file, or an empty directory) is made under this guard; recorded before or
    /// after it is made, it is removed in reverse order.
    pub fn record(&mut self, path: &Path) {
        if let Some(files) = self.0.as_mut() {
            files.push(path.to_owned());
        }
    }
}

/// The guard under which set-up makes its files ([`SetupFiles`]).
pub fn setup_files() -> SetupFiles {
    let in_setup = SETUP_DONE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    SetupFiles(in_setup.then(|| SETUP_FILES.lock().unwrap_or_else(|e| e.into_inner())))
}

/// Set-up is over: the watcher goes, and SIGINT and SIGTERM are unblocked on the calling
/// thread (the event loop's), so that one that came since is handled now.
pub fn release() -> io::Result<()> {
    let watch = SETUP_DONE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((done, watcher)) = watch {
        // The watcher sees this before a signal it has not read yet (which then stays pending
        // for the event loop) and returns; or it has read one already and is ending vmm, with
        // the files recorded so far: this thread waits for either.
        if done.write(1).is_ok() {
            let _ = watcher.join();
        }
    }
    SETUP_FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    change_mask(libc::SIG_UNBLOCK)
}

/// The watcher thread: waits for a stop signal or the end of set-up.
fn watch_setup(sfd: OwnedFd, done: EventFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: done.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[0].revents != 0 {
            return;
        }
        // SAFETY: signalfd_siginfo is plain data; all zeroes is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let got = unsafe { libc::read(sfd.as_raw_fd(), std::ptr::addr_of_mut!(info).cast(), size) };
        if got == size as isize {
            stop_during_setup(info.ssi_signo as i32);
        }
    }
}

/// Removes what set-up made and ends vmm (exit code 0, as a stop signal does later).
fn stop_during_setup(signal: i32) -> ! {
    let name = match signal {
        libc::SIGINT => "SIGINT",
        _ => "SIGTERM",
    };
    // Held until the end: set-up makes no file meanwhile (it waits for this lock), and one it
    // is making now is recorded before this thread gets it.
    let files = SETUP_FILES.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("vmm: {name} during set-up; stopping");
    for path in files.iter().rev() {
        if std::fs::remove_file(path).is_err() {
            let _ = std::fs::remove_dir(path);
        }
    }
    // SAFETY: _exit ends the process at once; nothing of this process is used afterwards.
    unsafe { libc::_exit(0) }
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: an empty set filled with valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for num in STOP_SIGNALS {
            libc::sigaddset(&mut set, num);
        }
        set
    }
}

fn change_mask(how: libc::c_int) -> io::Result<()> {
    let set = stop_set();
    // SAFETY: pthread_sigmask on the calling thread with a valid set, no old set requested.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
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
