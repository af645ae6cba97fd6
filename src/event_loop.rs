//! The main thread's event loop (event-manager): bytes from stdin go to the guest's serial
//! port; the guest's reset, power-off and panic, SIGINT/SIGTERM and the vCPUs' exit requests
//! stop the VM.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::serial::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, VmExit};
use crate::signals::SignalEvent;

/// Forwards stdin to the serial port.
pub struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: std::io::Stdin,
    /// Whether the first input was marked on the boot timeline.
    seen_input: bool,
}

impl StdinInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        StdinInput {
            serial,
            stdin: std::io::stdin(),
            seen_input: false,
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
            rustix::io::read(&self.stdin, &mut buf).map_err(std::io::Error::from)
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
                if !self.seen_input {
                    self.seen_input = true;
                    crate::timeline::mark("first input from stdin");
                }
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = serial.enqueue_input(&buf[..n]) {
                    log::warn!("cannot pass input to the guest's serial port: {e}");
                }
            }
        }
    }
}

const TOKEN_VM_EXIT: u32 = 1;
const TOKEN_SIGNAL: u32 = 2;
/// Tokens from here up: the guest's own stop events, in order.
const TOKEN_GUEST_EVENT: u32 = 3;

/// Watches every way the VM can be asked to stop.
pub struct ExitWatcher {
    exit: Arc<VmExit>,
    signal_evt: SignalEvent,
    /// Eventfds a device writes when the guest ends the VM, each with the reason it records
    /// (the i8042 reset line, the ACPI power-off register, pvpanic).
    guest_events: Vec<(EventFd, ExitReason)>,
}

impl ExitWatcher {
    pub fn new(
        exit: Arc<VmExit>,
        signal_evt: SignalEvent,
        guest_events: Vec<(EventFd, ExitReason)>,
    ) -> Self {
        ExitWatcher {
            exit,
            signal_evt,
            guest_events,
        }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<(&dyn AsRawFd, u32)> = vec![
            (&self.exit.evt, TOKEN_VM_EXIT),
            (&self.signal_evt, TOKEN_SIGNAL),
        ];
        for (token, (evt, _)) in (TOKEN_GUEST_EVENT..).zip(&self.guest_events) {
            fds.push((evt, token));
        }
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN)) {
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
            TOKEN_SIGNAL => {
                let sig = self.signal_evt.take().unwrap_or(libc::SIGTERM);
                self.exit.request(ExitReason::Signal(sig));
            }
            token => {
                let guest = token
                    .checked_sub(TOKEN_GUEST_EVENT)
                    .and_then(|i| self.guest_events.get(i as usize));
                match guest {
                    Some((evt, reason)) => {
                        let _ = evt.read();
                        crate::timeline::mark(&format!("guest stop: {reason}"));
                        self.exit.request(reason.clone());
                    }
                    None => log::warn!("unexpected event token {token}"),
                }
            }
        }
    }
}
