//! Runs a virtio device on the VMM's event loop ([`event_manager`], epoll, level-triggered).
//!
//! A [`QueueHandler`] is the one place where a device's queues and backend are processed: it
//! watches the notification eventfd of each queue (which KVM signals for an ioeventfd on
//! `QueueNotify`, and the transport signals for a `QueueNotify` write that reaches it) and the
//! device's backend descriptors ([`VirtioDevice::backend_fds`]), calls
//! [`VirtioDevice::process_queue`] or [`VirtioDevice::process_backend`] for each event, and
//! after every event asks [`VirtioDevice::backend_wanted`] again, adding a backend descriptor to
//! epoll or removing it from there so that a guest with no room for input does not make the
//! loop spin.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;

/// Event tokens from here up name a device's backend descriptors (`BACKEND_TOKEN_BASE + i` is
/// descriptor `i` of [`VirtioDevice::backend_fds`]); below it, token `i` is queue `i`'s
/// notification eventfd.
const BACKEND_TOKEN_BASE: u32 = 0x1_0000;

/// The event-loop subscriber of one virtio device: runs its queues when their notification
/// eventfds fire, and its backend descriptors (a TAP's) when they are readable, but only while
/// the device wants input.
pub struct QueueHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_evts: Vec<EventFd>,
    backend_fds: Vec<RawFd>,
    /// Whether each backend descriptor is in the epoll set now.
    backend_polled: Vec<bool>,
}

impl std::fmt::Debug for QueueHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandler")
            .field("queues", &self.queue_evts.len())
            .field("backend_fds", &self.backend_fds)
            .field("backend_polled", &self.backend_polled)
            .finish_non_exhaustive()
    }
}

impl QueueHandler {
    /// A handler for `device`, whose queue `i` is notified through `queue_evts[i]`.
    pub(crate) fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_evts: Vec<EventFd>) -> Self {
        let backend_fds = device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .backend_fds();
        let backend_polled = vec![false; backend_fds.len()];
        Self {
            device,
            queue_evts,
            backend_fds,
            backend_polled,
        }
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        // A device that panicked left its lock poisoned; its state is whatever it was, and
        // that must not take the event loop down too.
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or removes each backend descriptor from epoll as the device now wants.
    fn update_backend_interest(&mut self, ops: &mut EventOps) {
        let device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        for (index, &fd) in self.backend_fds.iter().enumerate() {
            let wanted = device.backend_wanted(index);
            if wanted == self.backend_polled[index] {
                continue;
            }
            let events = Events::with_data_raw(fd, BACKEND_TOKEN_BASE + index as u32, EventSet::IN);
            let result = if wanted {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            match result {
                Ok(()) => self.backend_polled[index] = wanted,
                Err(e) => error!("cannot change polling of device backend {index}: {e:?}"),
            }
        }
    }
}

impl MutEventSubscriber for QueueHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                error!("cannot watch virtio queue {index}: {e:?}");
            }
        }
        self.update_backend_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            token @ BACKEND_TOKEN_BASE.. => {
                let index = (token - BACKEND_TOKEN_BASE) as usize;
                self.lock_device().process_backend(index);
            }
            token => match self.queue_evts.get(token as usize) {
                Some(evt) => {
                    // Several notifications since the last read are one: the device takes
                    // every buffer there is.
                    let _ = evt.read();
                    let run = self.lock_device().process_queue(token as usize);
                    if run.more {
                        // Back of the line: epoll reports every other ready descriptor first.
                        if let Err(e) = evt.write(1) {
                            error!("cannot re-arm virtio queue {token}: {e}");
                        }
                    }
                }
                None => warn!("unexpected virtio event token {token}"),
            },
        }
        self.update_backend_interest(ops);
    }
}

#[cfg(test)]
mod tests;
