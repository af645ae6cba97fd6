//! The main thread's event loop (event-manager): bytes from stdin go to the guest's serial
//! port; SIGINT/SIGTERM stop the VM, and a stop requested elsewhere wakes the loop.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::serial::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::signals::SignalEvent;
use crate::stop::{StopReason, VmStop};

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
                #[cfg(feature = "seccomp-trigger")]
                crate::seccomp::trigger(buf[0]);
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

const TOKEN_VM_STOP: u32 = 1;
const TOKEN_SIGNAL: u32 = 2;

/// Watches the ways the VM is asked to stop from outside the guest: SIGINT/SIGTERM, and the
/// stop event that wakes the loop once a stop is requested (by a vCPU, a device or the API).
pub struct StopWatcher {
    stop: Arc<VmStop>,
    signal_evt: SignalEvent,
}

impl StopWatcher {
    pub fn new(stop: Arc<VmStop>, signal_evt: SignalEvent) -> Self {
        StopWatcher { stop, signal_evt }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let fds: [(&dyn AsRawFd, u32); 2] = [
            (&self.stop.evt, TOKEN_VM_STOP),
            (&self.signal_evt, TOKEN_SIGNAL),
        ];
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN)) {
                // Without these the VM could never be stopped: stop it now.
                self.stop.request(StopReason::Error(format!(
                    "cannot watch the VM's stop events: {e:?}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_VM_STOP => {
                let _ = self.stop.evt.read();
            }
            TOKEN_SIGNAL => {
                let sig = self.signal_evt.take().unwrap_or(libc::SIGTERM);
                self.stop.request(StopReason::Signal(sig));
            }
            token => log::warn!("unexpected event token {token}"),
        }
    }
}
