//! What the driver programs for each queue through the `Queue*` registers (virtio 1.2 §4.2.2),
//! until `DRIVER_OK` turns it into a [`Queue`].

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::virtio::ActivateError;

/// What the driver programmed for one queue; turned into a [`Queue`] on `DRIVER_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueConfig {
    pub(super) max_size: u16,
    /// `QueueNum` as written; checked (non-zero power of two, at most `max_size`) on activation.
    pub(super) size: u32,
    pub(super) ready: bool,
    pub(super) desc_table: u64,
    pub(super) avail_ring: u64,
    pub(super) used_ring: u64,
}

impl QueueConfig {
    pub(super) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            // §4.2.2: QueueNum defaults to QueueNumMax until the driver writes it.
            size: u32::from(max_size),
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }

    /// The [`Queue`] this configuration describes, checked against `mem` if ready.
    pub(super) fn build(
        &self,
        index: usize,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<Queue, ActivateError> {
        let config_err = |source| ActivateError::QueueConfig { index, source };
        let mut queue = Queue::new(self.max_size).map_err(config_err)?;
        if !self.ready {
            return Ok(queue);
        }
        let size =
            u16::try_from(self.size).map_err(|_| config_err(virtio_queue::Error::InvalidSize))?;
        queue.try_set_size(size).map_err(config_err)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(config_err)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(config_err)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(config_err)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(ActivateError::QueueNotInMemory { index });
        }
        Ok(queue)
    }
}

/// Replaces the low (`high == false`) or high 32 bits of `addr` with `value`.
pub(super) fn set_half(addr: &mut u64, value: u32, high: bool) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(value)
    };
}
