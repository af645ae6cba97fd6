//! Where the guest's serial output goes: the VMM's stdout, unbuffered, so that every byte
//! the guest writes is visible at once (and in order with anything else on the terminal).

use std::io::{self, Write};

/// Writes guest console output straight to stdout. The first byte is marked on the boot
/// timeline.
pub struct ConsoleOutput {
    first_byte_seen: bool,
    broken: bool,
}

impl ConsoleOutput {
    pub fn new() -> Self {
        ConsoleOutput {
            first_byte_seen: false,
            broken: false,
        }
    }
}

impl Default for ConsoleOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.first_byte_seen && !buf.is_empty() {
            self.first_byte_seen = true;
            crate::timeline::mark("first byte from the guest's serial port");
        }
        if self.broken {
            // stdout is gone (a closed pipe): the guest keeps running, its output is dropped.
            return Ok(buf.len());
        }
        let mut out = io::stdout().lock();
        match out.write_all(buf).and_then(|_| out.flush()) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.broken = true;
                log::warn!(
                    "guest console output is dropped from now on: cannot write to stdout: {e}"
                );
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            return Ok(());
        }
        io::stdout().flush()
    }
}
