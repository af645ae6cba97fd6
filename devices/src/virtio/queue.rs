//! How a device takes buffers from a virtqueue and tells the driver about used ones (virtio 1.2
//! §2.7.7, §2.7.10), shared by the devices whose requests come from the driver: virtio-blk's
//! request queue and virtio-net's transmit queue.

use log::{debug, warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioInterrupt;

/// The next available chain of `queue`, as `Queue::pop_descriptor_chain` takes it, but a ring
/// whose available index is impossible (more entries than the queue holds) is reported here,
/// at debug level: virtio-queue's own message for it is an error line per notification, which
/// vmm turns off (a guest could fill the log with it).
pub(crate) fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
    device: &str,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut chains) => chains.next(),
        Err(e) => {
            debug!("{device}: {e}");
            None
        }
    }
}

/// Rounds in a row in which the ring claimed more buffers after notifications were turned
/// back on but none could be taken, after which the available index counts as bogus (it
/// claims more buffers than the queue holds).
const MAX_EMPTY_ROUNDS: u32 = 2;

/// The most chains one run over a queue takes ([`process_chains`], and the devices with loops
/// of their own). A guest that refills a queue as fast as the device empties it would
/// otherwise keep the event loop in that device: after this many (or once the chains taken
/// hold [`BYTES_PER_RUN`] bytes: a few large block requests), the run ends with
/// [`Processed::more`], the device returns [`QueueRun::more`](super::QueueRun::more), and the
/// [`QueueHandler`](super::QueueHandler) signals the queue's notification eventfd itself, so
/// that the event loop comes back to it only after every other ready descriptor (other
/// devices, the console, signals, the API) had its turn: epoll hands out ready descriptors
/// round robin.
pub const CHAINS_PER_RUN: usize = 64;
/// The most bytes of buffers (the sum of the taken chains' descriptor lengths) one run of
/// [`process_chains`] takes; the chain that crosses it is the run's last.
pub const BYTES_PER_RUN: u64 = 8 << 20;

/// What [`process_chains`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Processed {
    /// Chains went to the used ring (then ask [`needs_notification`]).
    pub added: bool,
    /// The run stopped at [`CHAINS_PER_RUN`] chains or [`BYTES_PER_RUN`] bytes with
    /// notifications still off: the queue is to be run again.
    pub more: bool,
}

/// The standard loop on `queue` (virtio 1.2 §2.7.7, §2.7.10): with notifications off, takes
/// chains until the ring is empty, hands each to `execute` (which returns the chain's used
/// length, the bytes it wrote into the chain) and puts it in the used ring; then turns
/// notifications back on and looks again, so that a buffer the driver added meanwhile is not
/// left behind. Twice in a row with nothing taken means the available index is bogus: it stops
/// instead of spinning, and the next notification tries again. At most [`CHAINS_PER_RUN`]
/// chains and [`BYTES_PER_RUN`] bytes: then it stops with [`Processed::more`] (notifications stay off: the caller comes
/// back without the driver's help, and a run that finds the ring empty ends as usual).
///
/// `device` names the device and queue in log messages.
pub(crate) fn process_chains<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    device: &str,
    mut execute: F,
) -> Processed
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut added = false;
    let mut empty_rounds = 0;
    let mut taken = 0;
    let mut bytes = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            debug!("{device}: cannot disable notifications: {e}");
        }
        let mut popped = false;
        while let Some(chain) = pop_chain(queue, mem, device) {
            taken += 1;
            popped = true;
            // The descriptors are read twice; they are in guest memory the device reads anyway.
            bytes += chain.clone().map(|d| u64::from(d.len())).sum::<u64>();
            let head = chain.head_index();
            let len = execute(chain);
            match queue.add_used(mem, head, len) {
                Ok(()) => added = true,
                Err(e) => debug!("{device}: cannot return chain {head}: {e}"),
            }
            if taken == CHAINS_PER_RUN || bytes >= BYTES_PER_RUN {
                // Whether or not the ring is empty now, the next run finds out.
                return Processed { added, more: true };
            }
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        match queue.enable_notification(mem) {
            Ok(false) => break,
            // More buffers arrived while notifications were off: go round again.
            Ok(true) if empty_rounds < MAX_EMPTY_ROUNDS => {}
            Ok(true) => {
                debug!("{device}: available ring index is inconsistent; ignoring it");
                break;
            }
            Err(e) => {
                debug!("{device}: cannot enable notifications: {e}");
                break;
            }
        }
    }
    Processed { added, more: false }
}

/// Whether the driver wants a used buffer notification for `queue`, to which the device has
/// just added used buffers (§2.7.7: the ring's flags; §2.7.10: `used_event` with
/// `VIRTIO_RING_F_EVENT_IDX`). When `used_event` cannot be read, it gets one.
pub(crate) fn needs_notification(queue: &mut Queue, mem: &GuestMemoryMmap, device: &str) -> bool {
    queue.needs_notification(mem).unwrap_or_else(|e| {
        debug!("{device}: cannot read used_event, notifying anyway: {e}");
        true
    })
}

/// Sends the driver a used buffer notification; a failure is logged and the device goes on.
pub(crate) fn signal_used_queue(interrupt: &dyn VirtioInterrupt, device: &str) {
    if let Err(e) = interrupt.signal_used_queue() {
        warn!("{device}: cannot signal the guest: {e}");
    }
}
