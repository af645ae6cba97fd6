//! Virtio devices (virtio 1.2), split into transport and device logic.
//!
//! - [`VirtioDevice`]: what a device does (its type, features, configuration space and queue
//!   processing), independent of how the guest reaches it.
//! - [`mmio::MmioTransport`]: the virtio-over-MMIO register file (virtio 1.2 §4.2, version 2) that
//!   the guest programs; it negotiates features, collects the queue addresses and hands ready
//!   [`Queue`]s to the device on `DRIVER_OK`.
//! - [`block::Block`]: the block device (virtio 1.2 §5.2) on a host file.
//! - [`net::Net`]: the network device (virtio 1.2 §5.1) on a [`net::NetBackend`], normally a
//!   [`net::Tap`].
//! - [`rng::Rng`]: the entropy device (virtio 1.2 §5.4) on the host's `getrandom(2)`.
//! - [`fs::Fs`]: the file system device (virtio 1.2 §5.11), a vhost-user front end to a back
//!   end such as `virtiofsd`.
//! - [`QueueHandler`]: runs a device's queues and backend on the VMM's event loop.
//!
//! Interrupts leave a device through the small [`VirtioInterrupt`] trait. The VMM gives the
//! transport an [`EventFdInterrupt`] and registers its eventfd with KVM as an irqfd; tests read the
//! eventfd. Nothing here depends on `kvm-ioctls`.
//!
//! Queue notifications arrive the other way, always through an eventfd: the transport owns one
//! per queue ([`MmioTransport::queue_evts`]). The VMM registers eventfd `i` with KVM as an
//! ioeventfd on the `QueueNotify` register with datamatch `i`, so a notification costs no exit
//! to userspace; a `QueueNotify` write that no ioeventfd catches reaches the transport, which
//! signals the same eventfd. Either way the device's queues are processed in one place: the
//! [`QueueHandler`] ([`handler`]) on the VMM's event loop, which calls
//! [`VirtioDevice::process_queue`]`(i)` when eventfd `i` fires.
//!
//! A device with host-side input (the TAP of [`net::Net`]) also lists file descriptors in
//! [`VirtioDevice::backend_fds`]; the same handler polls them and calls
//! [`VirtioDevice::process_backend`] when one is readable, for as long as
//! [`VirtioDevice::backend_wanted`] says so (see there for the exact contract).
//!
//! Who calls what, on which thread:
//! - the VMM's setup, once: `device_type`, `avail_features` and `queue_max_sizes` (when the
//!   transport is made), `backend_fds` (when its [`QueueHandler`] is made);
//! - vCPU threads, through the transport ([`crate::BusDevice`] reads and writes):
//!   `read_config`/`write_config`, `activate` (on `DRIVER_OK`) and `reset` (a `Status` write
//!   of 0); a trapped `QueueNotify` only signals the queue's eventfd;
//! - the event-loop thread, through the [`QueueHandler`] only: `process_queue`,
//!   `process_backend` and `backend_wanted`.
//!
//! Each of them locks the device (`Arc<Mutex<dyn VirtioDevice>>`), so its methods never run at
//! the same time.

pub mod block;
pub mod fs;
pub mod handler;
pub mod mmio;
pub mod net;
mod queue;
pub mod rng;
#[cfg(test)]
mod test_utils;
pub mod vsock;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use block::Block;
pub use handler::QueueHandler;
pub use mmio::MmioTransport;
pub use net::{Net, NetBackend, Tap};
pub use queue::{BYTES_PER_RUN, CHAINS_PER_RUN};
pub use rng::Rng;
use virtio_queue::QueueT;
pub use virtio_queue::{Queue, QueueState};

/// `VIRTIO_F_VERSION_1` (virtio 1.2 §6): the device follows virtio 1.x, not the legacy interface.
/// The MMIO transport refuses a driver that does not accept it.
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_INDIRECT_DESC` (virtio 1.2 §2.7.5.3, §6): the driver may use indirect
/// descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 =
    virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// `VIRTIO_RING_F_EVENT_IDX` (virtio 1.2 §2.7.7, §2.7.10, §6): notification suppression through
/// the `used_event` / `avail_event` fields instead of the ring flags.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Interrupt status bit 0, "used buffer notification" (virtio 1.2 §4.2.2, `InterruptStatus`).
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit 1, "configuration change notification" (virtio 1.2 §4.2.2).
pub const VIRTIO_MMIO_INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// The most buffers one `readv`/`writev`/`preadv`/`pwritev` call takes (Linux `UIO_MAXIOV`,
/// include/uapi/linux/uio.h); both the block device's disk I/O and a TAP's frames stay
/// within it.
pub(crate) const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// Copies `data.len()` bytes of a device's config space from `offset`; bytes past its end
/// (or at an offset no `usize` can hold) read as 0, as a driver probing beyond it expects.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).ok();
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = start
            .and_then(|s| s.checked_add(i))
            .and_then(|j| config.get(j))
            .copied()
            .unwrap_or(0);
    }
}

/// The feature bit `bit` as a mask in the 64-bit feature word (virtio 1.2 §2.2).
pub const fn feature_bit(bit: u32) -> u64 {
    1u64 << bit
}

/// Why a device refused to start (virtio 1.2 §3.1.1, step 8: the driver set `DRIVER_OK`).
///
/// The transport answers by setting `DEVICE_NEEDS_RESET` in the device status (§2.1.2).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device needs a different number of queues than the transport gave it.
    #[error("the device needs {expected} queues, the transport gave it {actual}")]
    QueueCount {
        /// Queues the device uses.
        expected: usize,
        /// Queues the transport passed.
        actual: usize,
    },
    /// A queue the device needs was not made ready by the driver.
    #[error("queue {index} is not ready")]
    QueueNotReady {
        /// Index of the queue.
        index: usize,
    },
    /// The driver's queue configuration does not fit the queue (size or alignment).
    #[error("queue {index} is configured with an invalid size or address")]
    QueueConfig {
        /// Index of the queue.
        index: usize,
        /// What virtio-queue rejected.
        #[source]
        source: virtio_queue::Error,
    },
    /// The rings of a ready queue are not inside guest memory.
    #[error("the rings of queue {index} are not in guest memory")]
    QueueNotInMemory {
        /// Index of the queue.
        index: usize,
    },
    /// The device was already started and not reset since.
    #[error("the device is already active")]
    AlreadyActive,
    /// The host backend refused a setting the negotiated features need (for virtio-net: the
    /// TAP's offloads).
    #[error("the device's host backend refused the negotiated settings")]
    Backend(#[source] io::Error),
}

/// The `N` queues [`VirtioDevice::activate`] got, checked: exactly `N`, each made ready by the
/// driver.
pub(crate) fn ready_queues<const N: usize>(
    queues: Vec<Queue>,
) -> Result<[Queue; N], ActivateError> {
    let actual = queues.len();
    let queues = <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount {
        expected: N,
        actual,
    })?;
    if let Some(index) = queues.iter().position(|queue| !queue.ready()) {
        return Err(ActivateError::QueueNotReady { index });
    }
    Ok(queues)
}

/// What one [`VirtioDevice::process_queue`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueRun {
    /// The driver was sent a used buffer notification.
    pub notified: bool,
    /// The run stopped at its budget ([`CHAINS_PER_RUN`], [`BYTES_PER_RUN`]) and the queue may
    /// hold more: run it again after everyone else had a turn.
    pub more: bool,
}

/// The queue of a single-queue device (virtio-blk, virtio-rng) and what it needs, from
/// `DRIVER_OK` to reset.
pub(crate) struct ActiveQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: std::sync::Arc<dyn VirtioInterrupt>,
}

impl ActiveQueue {
    /// Starts a single-queue device whose queue is kept in `slot`, as
    /// [`VirtioDevice::activate`] asks: not while started already, with exactly one queue, and
    /// that one ready.
    pub fn start(
        slot: &mut Option<ActiveQueue>,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if slot.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let [queue] = ready_queues(queues)?;
        *slot = Some(ActiveQueue {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    /// The queue's state while started, as [`VirtioDevice::queue_states`] gives it.
    pub fn states(slot: &Option<ActiveQueue>) -> Vec<QueueState> {
        slot.as_ref()
            .map(|active| vec![active.queue.state()])
            .unwrap_or_default()
    }
}

/// Device logic, independent of the transport (MMIO here; PCI would implement the same calls).
///
/// Every method is called with guest-chosen values and must not panic on any of them.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2 §5: 1 = network, 2 = block).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; the slice's length is the number of
    /// queues. Each size must be a power of two no larger than 32768 (virtio 1.2 §2.7).
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers (virtio 1.2 §2.2), as a 64-bit mask.
    fn avail_features(&self) -> u64;

    /// Reads `data.len()` bytes of the device configuration space (virtio 1.2 §2.5) at `offset`.
    /// Bytes beyond the end of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`; writes to read-only or absent fields are
    /// ignored. Default: every field is read-only (true of every device here: virtio-blk's
    /// `wce` would need `VIRTIO_BLK_F_CONFIG_WCE`, virtio-net's `mac` is read-only for a modern
    /// driver), so the write is logged at debug level and dropped.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio device {}: ignoring {}-byte config write at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }

    /// Starts the device: the driver set `DRIVER_OK` (virtio 1.2 §3.1.1).
    ///
    /// `queues` holds one [`Queue`] per entry of [`queue_max_sizes`](Self::queue_max_sizes), in
    /// order; the transport has checked every ready queue against `mem`. `acked_features` is the
    /// feature set the driver accepted (a subset of [`avail_features`](Self::avail_features)).
    /// The device signals the guest through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: std::sync::Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// Returns the device to its state before [`activate`](Self::activate): drops the queues,
    /// the guest memory and the interrupt (virtio 1.2 §2.4, device reset).
    fn reset(&mut self);

    /// Whether [`activate`](Self::activate) succeeded and no [`reset`](Self::reset) followed.
    fn is_activated(&self) -> bool;

    /// The state of each of the device's queues while activated, in queue order (one per
    /// entry of [`queue_max_sizes`](Self::queue_max_sizes)); empty when not activated.
    ///
    /// For a snapshot: with the ring addresses it holds the device's ring positions
    /// (`next_avail`, `next_used`), where a restored device goes on. A device that holds
    /// buffers it took from a ring but has not returned yet counts them as not taken where it
    /// can, so that the restored device takes them again (see [`net`] for virtio-net's).
    fn queue_states(&self) -> Vec<QueueState>;

    /// Processes the available buffers of queue `queue_index`: the driver notified the queue,
    /// or the last run stopped at its budget.
    ///
    /// Called only by the [`QueueHandler`], on the VMM's event-loop thread, when the queue's
    /// notification eventfd fired, whether KVM signalled it (an ioeventfd on `QueueNotify`),
    /// the transport did (a trapped `QueueNotify` write) or the handler did (after a run that
    /// returned [`QueueRun::more`]); the transport never calls it. Several notifications may
    /// come as one call. A run takes at most [`CHAINS_PER_RUN`] chains ([`BYTES_PER_RUN`]
    /// bytes) and then returns `more`, so that a guest refilling a queue without end cannot keep the event loop from
    /// the other devices, signals and the API. Does nothing for an unknown queue or an inactive
    /// device (KVM signals an ioeventfd whatever the device status).
    fn process_queue(&mut self, queue_index: usize) -> QueueRun;

    /// Host file descriptors the device takes input from (virtio-net: its TAP), for the VMM to
    /// poll. The list is fixed when the device is created and never changes; position `index`
    /// in it is the `index` of [`process_backend`](Self::process_backend) and
    /// [`backend_wanted`](Self::backend_wanted). The device owns the descriptors (the VMM must
    /// neither read nor close them) and keeps them non-blocking. Default: none.
    ///
    /// The contract with the VMM's event loop (epoll, level-triggered), which the
    /// [`QueueHandler`] implements:
    /// - watch each descriptor for `EPOLLIN` while `backend_wanted(index)` is `true`, and call
    ///   `process_backend(index)` when it is readable (also on `EPOLLERR`/`EPOLLHUP`);
    /// - after *every* event it dispatches to this device (a queue's notification eventfd and
    ///   `process_queue`, or a backend descriptor and `process_backend`), ask
    ///   `backend_wanted(index)` again for each descriptor, and remove the descriptor from epoll
    ///   while it is `false` / add it back once it is `true`;
    /// - call these methods from the event-loop thread, with the device locked.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Backend descriptor `index` of [`backend_fds`](Self::backend_fds) is readable: the device
    /// takes what input it has room for (virtio-net: frames into the guest's receive buffers).
    ///
    /// Never blocks and does a bounded amount of work per call (a level-triggered epoll calls
    /// again while input is left). When it returns, either the descriptor has no more input
    /// for now, or [`backend_wanted`](Self::backend_wanted)`(index)` is `false`, or the batch
    /// limit was reached and calling again makes progress: a VMM that follows the contract
    /// never spins. Does nothing for an unknown index or an inactive device. Default: nothing.
    fn process_backend(&mut self, index: usize) {
        let _ = index;
    }

    /// Whether the device can take input from backend descriptor `index` now.
    ///
    /// `false` while the device is not active, while the guest has posted nowhere to put input
    /// (virtio-net: no free receive buffers; the device then holds any frame it already read,
    /// it drops nothing), and after the backend failed for good (end of file, repeated
    /// errors). While it is `false` the VMM must not poll the descriptor, or a readable
    /// descriptor would make its loop spin.
    ///
    /// It turns `false` only inside `process_backend`, `process_queue` and
    /// [`reset`](Self::reset), and `true` only inside `process_queue` (the driver notified the
    /// queue that it added buffers) and [`activate`](Self::activate). `process_backend` and
    /// `process_queue` run on the event loop, which asks again after each of them. `activate`
    /// and `reset` run on a vCPU thread (a `Status` write), outside the event loop: after a
    /// reset the next backend event finds the device inactive, does nothing, and the re-check
    /// takes the descriptor out; after an activation the driver notifies the receive queue once
    /// it has filled it (Linux does), and the re-check after that notification puts it in.
    /// Every notification, trapped or not, is such an event-loop event (see
    /// [`process_queue`](Self::process_queue)). Default: `true`.
    fn backend_wanted(&self, index: usize) -> bool {
        let _ = index;
        true
    }
}

/// Notifications from a device to the driver (virtio 1.2 §2.3).
pub trait VirtioInterrupt: Send + Sync {
    /// Sends a used buffer notification: the device put buffers in a used ring.
    fn signal_used_queue(&self) -> io::Result<()>;
    /// Sends a configuration change notification (also used for `DEVICE_NEEDS_RESET`, §2.1.2).
    fn signal_config_change(&self) -> io::Result<()>;
}

/// A [`VirtioInterrupt`] over an eventfd that the VMM registers with KVM as an irqfd, plus the
/// `InterruptStatus` bits the MMIO transport shows the driver (virtio 1.2 §4.2.2).
///
/// A notification first sets its bit in the status, then signals the eventfd, so a guest that
/// takes the interrupt always finds the reason; the driver clears bits through `InterruptACK`.
#[derive(Debug)]
pub struct EventFdInterrupt {
    irqfd: EventFd,
    status: AtomicU32,
}

impl EventFdInterrupt {
    /// Wraps `irqfd`; nothing is pending.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            irqfd,
            status: AtomicU32::new(0),
        }
    }

    /// The eventfd the VMM registered with KVM as the device's irqfd.
    #[cfg(test)]
    pub(crate) fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The pending interrupt reasons ([`VIRTIO_MMIO_INT_VRING`], [`VIRTIO_MMIO_INT_CONFIG`]).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the reasons in `bits` (the driver wrote `InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every pending reason (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets the pending reasons `bits` from a snapshot and, if there are any, signals the
    /// eventfd again, so that an interrupt the guest had not handled when the snapshot was
    /// taken reaches it (one it had handled comes twice; the guest finds nothing new and
    /// carries on).
    pub fn restore_status(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if bits == 0 {
            return Ok(());
        }
        self.irqfd.write(1)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

impl VirtioInterrupt for EventFdInterrupt {
    fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn eventfd_interrupt_sets_status_then_signals() {
        let irq = EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        assert_eq!(irq.status(), 0);
        assert_eq!(
            irq.irqfd().read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        irq.signal_used_queue().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);

        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.signal_used_queue().unwrap();
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn feature_bits() {
        assert_eq!(feature_bit(VIRTIO_F_VERSION_1), 1 << 32);
        assert_eq!(feature_bit(VIRTIO_RING_F_EVENT_IDX), 1 << 29);
        assert_eq!(feature_bit(VIRTIO_RING_F_INDIRECT_DESC), 1 << 28);
    }
}
