//! The host terminal: raw mode while a guest owns the console, restored on every exit path
//! (normal return, error, SIGINT/SIGTERM through the event loop, and panics via a hook).

use std::io;
use std::sync::Mutex;

/// The terminal settings to restore, when stdin is a tty that we switched to raw mode.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in raw mode while alive; restores it when dropped.
pub struct RawModeGuard {
    active: bool,
}

/// True when standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

impl RawModeGuard {
    /// Switches stdin to raw mode if it is a terminal; does nothing otherwise.
    pub fn new() -> io::Result<Self> {
        if !stdin_is_tty() {
            return Ok(RawModeGuard { active: false });
        }
        // SAFETY: termios is plain old data; tcgetattr fills it in.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        // Keys go to the guest as they are typed: no line editing, no echo, no signals from
        // ^C/^Z (the guest gets them), no CR/NL translation on input. Output processing stays
        // on so host-side log lines still start at column 0.
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        install_panic_hook();
        // SAFETY: valid descriptor and pointer to an initialised termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawModeGuard { active: true })
    }
}

/// Restores the saved terminal settings, if any. Safe to call more than once.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: valid descriptor and pointer to the termios saved from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}
