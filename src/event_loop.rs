//! The main thread's event loop (event-manager): bytes from stdin go to the guest's serial
//! port; the i8042 reset line, SIGINT/SIGTERM and the vCPUs' exit requests stop the VM.

use std::sync::{Arc, Mutex};

use devices::serial::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, VmExit};

/// Forwards stdin to the serial port.
pub struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: std::io::Stdin,
}

impl StdinInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        StdinInput {
            serial,
            stdin: std::io::stdin(),
        }
    }
}

impl MutEventSubscriber for StdinInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Stdin may be something epoll cannot watch (a regular file, /dev/null): then the
        // guest simply gets no input.
        if let Err(e) = ops.add(Events::new(&self.stdin, EventSet::IN)) {
            log::debug!("not forwarding stdin to the guest: cannot poll it ({e:?})");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // Read the descriptor itself: `Stdin`'s own buffer would hide bytes from epoll.
        let n = if events.event_set().contains(EventSet::IN) {
            // SAFETY: reads into a live local buffer of the given length from fd 0.
            let n = unsafe {
                libc::read(
                    libc::STDIN_FILENO,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
        } else {
            Ok(0)
        };
        match n {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => {
                // End of input (or a hang-up): stop watching, keep the guest running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = serial.enqueue_input(&buf[..n]) {
                    log::warn!("cannot pass input to the guest's serial port: {e}");
                }
            }
        }
    }
}

const TOKEN_VM_EXIT: u32 = 1;
const TOKEN_RESET: u32 = 2;
const TOKEN_SIGNAL: u32 = 3;

/// Watches every way the VM can be asked to stop.
pub struct ExitWatcher {
    exit: Arc<VmExit>,
    reset_evt: EventFd,
    signal_evt: EventFd,
}

impl ExitWatcher {
    pub fn new(exit: Arc<VmExit>, reset_evt: EventFd, signal_evt: EventFd) -> Self {
        ExitWatcher {
            exit,
            reset_evt,
            signal_evt,
        }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [
            (&self.exit.evt, TOKEN_VM_EXIT),
            (&self.reset_evt, TOKEN_RESET),
            (&self.signal_evt, TOKEN_SIGNAL),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                // Without these the VM could never be stopped: stop it now.
                self.exit.request(ExitReason::Error(format!(
                    "cannot watch the VM's stop events: {e:?}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_VM_EXIT => {
                let _ = self.exit.evt.read();
            }
            TOKEN_RESET => {
                let _ = self.reset_evt.read();
                self.exit.request(ExitReason::Reset);
            }
            TOKEN_SIGNAL => {
                let _ = self.signal_evt.read();
                let sig = crate::signals::last_signal().unwrap_or(libc::SIGTERM);
                self.exit.request(ExitReason::Signal(sig));
            }
            other => log::warn!("unexpected event token {other}"),
        }
    }
}
