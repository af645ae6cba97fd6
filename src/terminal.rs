//! The host terminal: raw mode while a guest owns the console, restored on every exit path
//! (normal return, error, SIGINT/SIGTERM through the event loop, and panics via a hook).

use std::io::{self, IsTerminal};
use std::sync::Mutex;

use rustix::termios::{self, InputModes, LocalModes, OptionalActions, SpecialCodeIndex, Termios};

/// The terminal settings to restore, when stdin is a tty that we switched to raw mode.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts stdin in raw mode while alive; restores it when dropped.
pub struct RawModeGuard {
    active: bool,
}

impl RawModeGuard {
    /// Switches stdin to raw mode if it is a terminal; does nothing otherwise.
    pub fn new() -> io::Result<Self> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawModeGuard { active: false });
        }
        let original = termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        // Keys go to the guest as they are typed: no line editing, no echo, no signals from
        // ^C/^Z (the guest gets them), no CR/NL translation on input. Output processing stays
        // on so host-side log lines still start at column 0.
        raw.input_modes &= !(InputModes::IGNBRK
            | InputModes::BRKINT
            | InputModes::PARMRK
            | InputModes::ISTRIP
            | InputModes::INLCR
            | InputModes::IGNCR
            | InputModes::ICRNL
            | InputModes::IXON);
        raw.local_modes &= !(LocalModes::ECHO
            | LocalModes::ECHONL
            | LocalModes::ICANON
            | LocalModes::ISIG
            | LocalModes::IEXTEN);
        raw.special_codes[SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        install_panic_hook();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawModeGuard { active: true })
    }
}

/// Restores the saved terminal settings, if any. Safe to call more than once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        if let Err(e) = termios::tcsetattr(io::stdin(), OptionalActions::Now, &t) {
            log::warn!("cannot restore the terminal settings: {e}");
        }
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
