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

/// The standard loop on `queue` (virtio 1.2 §2.7.7, §2.7.10): with notifications off, takes
/// chains until the ring is empty, hands each to `execute` (which returns the chain's used
/// length, the bytes it wrote into the chain) and puts it in the used ring; then turns
/// notifications back on and looks again, so that a buffer the driver added meanwhile is not
/// left behind. Twice in a row with nothing taken means the available index is bogus: it stops
/// instead of spinning, and the next notification tries again.
///
/// Returns whether any chain went to the used ring (then ask [`needs_notification`]).
/// `device` names the device and queue in log messages.
pub(crate) fn process_chains<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    device: &str,
    mut execute: F,
) -> bool
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut added = false;
    let mut empty_rounds = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            debug!("{device}: cannot disable notifications: {e}");
        }
        let mut popped = false;
        while let Some(chain) = pop_chain(queue, mem, device) {
            popped = true;
            let head = chain.head_index();
            let len = execute(chain);
            match queue.add_used(mem, head, len) {
                Ok(()) => added = true,
                Err(e) => debug!("{device}: cannot return chain {head}: {e}"),
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
    added
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
