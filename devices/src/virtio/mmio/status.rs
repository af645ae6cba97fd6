//! The device status register and what its writes start (virtio 1.2 §2.1, §3.1.1, §4.2.3.1):
//! feature negotiation, activation of the device on `DRIVER_OK`, and reset.

use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::Queue;

use super::{MmioTransport, QueueConfig};
use crate::virtio::{
    feature_bit, ActivateError, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Device status bits the driver sets (virtio 1.2 §2.1); `DEVICE_NEEDS_RESET` is the device's.
pub(super) const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// Whether the driver status bits in `status` follow the initialization order (virtio 1.2
/// §3.1.1): ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then DRIVER_OK.
pub(super) fn in_init_order(status: u32) -> bool {
    let has = |bit: u32| status & bit != 0;
    (!has(VIRTIO_CONFIG_S_DRIVER) || has(VIRTIO_CONFIG_S_ACKNOWLEDGE))
        && (!has(VIRTIO_CONFIG_S_FEATURES_OK) || has(VIRTIO_CONFIG_S_DRIVER))
        && (!has(VIRTIO_CONFIG_S_DRIVER_OK) || has(VIRTIO_CONFIG_S_FEATURES_OK))
}

impl MmioTransport {
    /// Whether the device can accept `driver_features`: only features it offers, and
    /// `VIRTIO_F_VERSION_1`, which the modern interface needs (virtio 1.2 §2.2.1, §4.2.3.1:
    /// "the device MUST NOT accept" others).
    pub(super) fn driver_features_acceptable(&self, driver_features: u64) -> bool {
        let unoffered = driver_features & !self.device_features;
        if unoffered != 0 {
            debug!("virtio-mmio: driver accepted features {unoffered:#x} the device did not offer");
            return false;
        }
        if driver_features & feature_bit(VIRTIO_F_VERSION_1) == 0 {
            debug!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            return false;
        }
        true
    }

    /// A write to `Status` (virtio 1.2 §2.1, §3.1.1, §4.2.3.1).
    pub(super) fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & !DRIVER_STATUS_BITS != 0 {
            debug!("virtio-mmio: ignoring device-owned status bits in {value:#x}");
        }
        let mut new = value & DRIVER_STATUS_BITS;
        let old = self.status & DRIVER_STATUS_BITS;
        // §2.1.2: the driver never clears a status bit; only a write of 0 (reset) does.
        if old & !new != 0 {
            debug!("virtio-mmio: status write {value:#x} would clear bits of {old:#x}; ignored");
            return;
        }
        if !in_init_order(new) {
            debug!("virtio-mmio: status write {value:#x} skips an initialization step; ignored");
            return;
        }
        let setting = |new: u32, bit: u32| new & bit != 0 && old & bit == 0;
        if setting(new, VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.driver_features_acceptable(self.driver_features)
        {
            // §3.1.1 step 6: the driver re-reads Status and sees FEATURES_OK clear.
            new &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        }
        let activate = setting(new, VIRTIO_CONFIG_S_DRIVER_OK);
        self.status = (self.status & !DRIVER_STATUS_BITS) | new;
        if activate {
            if let Err(e) = self.activate() {
                let device_type = self.device_type;
                if self.start_failure_logged {
                    debug!("virtio-mmio: cannot start device type {device_type}: {e}");
                } else {
                    self.start_failure_logged = true;
                    warn!(
                        "virtio-mmio: cannot start device type {device_type}: {e} (later \
                         failures are logged at debug level)"
                    );
                }
                // §2.1.2: a device that needs a reset sets DEVICE_NEEDS_RESET and sends a
                // configuration change notification (InterruptStatus bit 1, §4.2.2).
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                if let Err(e) = self.interrupt.signal_config_change() {
                    warn!("virtio-mmio: cannot signal the guest: {e}");
                }
            }
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let queues = self.build_queues()?;
        self.start_device(queues)
    }

    /// The queues the registers describe, each ready one checked against guest memory, with
    /// `VIRTIO_RING_F_EVENT_IDX` as the driver accepted it.
    pub(super) fn build_queues(&self) -> Result<Vec<Queue>, ActivateError> {
        let event_idx = self.driver_features & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        self.queues
            .iter()
            .enumerate()
            .map(|(index, config)| config.build(index, &self.mem, event_idx))
            .collect()
    }

    /// Hands `queues` and the accepted features to the device.
    pub(super) fn start_device(&self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let (mem, features) = (self.mem.clone(), self.driver_features);
        self.lock_device()
            .activate(mem, queues, features, interrupt)
    }

    /// Device reset (virtio 1.2 §2.4): the device drops its queues, every register goes back
    /// to its initial value and pending interrupts are cleared.
    pub(super) fn reset(&mut self) {
        self.lock_device().reset();
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.clear();
    }
}
