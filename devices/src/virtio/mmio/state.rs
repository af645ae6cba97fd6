//! Snapshot and restore of a transport: its registers, the interrupt status and, for a
//! started device, where each queue's rings stand.
//!
//! [`MmioTransport::state`] records what the driver programmed and the device's ring
//! positions; [`MmioTransport::restore`] puts it back on a freshly created transport for the
//! same kind of device, and starts the device as a `DRIVER_OK` write would have, at those
//! positions. The state comes from a file the user gives, so everything in it is checked
//! first; a restore that fails leaves the transport as it was created.

use std::io;

use log::debug;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::QueueT;

use super::status::{in_init_order, DRIVER_STATUS_BITS};
use super::{MmioTransport, QueueConfig};
use crate::virtio::{ActivateError, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

/// Where the device stands in a queue's rings (virtio 1.2 §2.7): the next available ring
/// entry it takes and the next used ring entry it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingIndices {
    /// The available ring index of the next buffer the device takes.
    pub next_avail: u16,
    /// The used ring index the device fills next.
    pub next_used: u16,
}

/// One queue in an [`MmioState`]: what the driver programmed through the `Queue*` registers
/// and, while the device runs, its ring positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioQueueState {
    /// `QueueNumMax`, the device's maximum size (checked on restore).
    pub max_size: u16,
    /// `QueueNum` as the driver wrote it.
    pub size: u32,
    /// `QueueReady`.
    pub ready: bool,
    /// `QueueDesc`: the descriptor table's guest address.
    pub desc_table: u64,
    /// `QueueDriver`: the available ring's guest address.
    pub avail_ring: u64,
    /// `QueueDevice`: the used ring's guest address.
    pub used_ring: u64,
    /// The device's positions in the rings; present exactly when the device was started.
    pub rings: Option<RingIndices>,
}

/// The state of a transport and its device's queues, for a snapshot
/// ([`MmioTransport::state`], [`MmioTransport::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// `DeviceID` (virtio 1.2 §5); must be the restoring device's.
    pub device_type: u32,
    /// The features the device offers; must be the restoring device's.
    pub device_features: u64,
    /// `QueueSel`.
    pub queue_select: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_select: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_select: u32,
    /// The features the driver accepted (both halves of `DriverFeatures`).
    pub driver_features: u64,
    /// `Status` (virtio 1.2 §2.1).
    pub status: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// `InterruptStatus`: the reasons the guest has not acknowledged yet.
    pub interrupt_status: u32,
    /// One per queue, in queue order.
    pub queues: Vec<MmioQueueState>,
}

/// Why [`MmioTransport::restore`] refused a state; the transport is left as it was created.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The transport is not as it was created: the driver or an earlier restore set it up.
    #[error("the virtio-mmio transport is in use (device status {status:#x})")]
    InUse {
        /// The device status now.
        status: u32,
    },
    /// The snapshot is of another kind of device.
    #[error("device type {snapshot} in the snapshot, {here} here")]
    DeviceType {
        /// In the snapshot.
        snapshot: u32,
        /// Of this device.
        here: u32,
    },
    /// The device offers other features than the one in the snapshot.
    #[error("device features {snapshot:#x} in the snapshot, {here:#x} here")]
    DeviceFeatures {
        /// In the snapshot.
        snapshot: u64,
        /// Of this device.
        here: u64,
    },
    /// The device has another number of queues.
    #[error("{snapshot} queues in the snapshot, {here} here")]
    QueueCount {
        /// In the snapshot.
        snapshot: usize,
        /// Of this device.
        here: usize,
    },
    /// A queue has another maximum size.
    #[error("queue {index} has maximum size {snapshot} in the snapshot, {here} here")]
    QueueMaxSize {
        /// Index of the queue.
        index: usize,
        /// In the snapshot.
        snapshot: u16,
        /// Of this device.
        here: u16,
    },
    /// The device status is not one a driver and this transport can reach.
    #[error("device status {0:#x} in the snapshot is not one a driver can set")]
    Status(u32),
    /// `FEATURES_OK` is set for features the device must refuse.
    #[error("the snapshot's device accepted driver features {0:#x}, which this one refuses")]
    DriverFeatures(u64),
    /// The interrupt status has bits no notification sets.
    #[error("interrupt status {0:#x} in the snapshot has unknown bits")]
    InterruptStatus(u32),
    /// The device was started but a queue's ring positions are missing.
    #[error("the device was started but the snapshot has no ring positions for queue {index}")]
    MissingRings {
        /// Index of the queue.
        index: usize,
    },
    /// A queue has ring positions but the device was not started.
    #[error("the device was not started but the snapshot has ring positions for queue {index}")]
    UnexpectedRings {
        /// Index of the queue.
        index: usize,
    },
    /// The device did not start with the snapshot's queues and features.
    #[error("cannot start the device with the snapshot's queues and features")]
    Activate(#[source] ActivateError),
    /// A queue's notification eventfd or the interrupt eventfd could not be signalled.
    #[error("cannot signal the restored device's eventfds")]
    Signal(#[source] io::Error),
}

/// `InterruptStatus` bits a notification can set (virtio 1.2 §4.2.2).
const INTERRUPT_STATUS_BITS: u32 = VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;

impl MmioState {
    /// Whether the device was started: `DRIVER_OK` and not `DEVICE_NEEDS_RESET` (a device
    /// that refused to start sets that).
    fn device_started(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
    }
}

impl MmioTransport {
    /// The transport's registers, its interrupt status and, if the device is started, the
    /// device's ring positions (which locks the device). For a snapshot, taken with the vCPUs
    /// and the device's event loop stopped.
    pub fn state(&self) -> MmioState {
        let rings = self.lock_device().queue_states();
        MmioState {
            device_type: self.device_type,
            device_features: self.device_features,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(index, queue)| MmioQueueState {
                    max_size: queue.max_size,
                    size: queue.size,
                    ready: queue.ready,
                    desc_table: queue.desc_table,
                    avail_ring: queue.avail_ring,
                    used_ring: queue.used_ring,
                    rings: rings.get(index).map(|q| RingIndices {
                        next_avail: q.next_avail,
                        next_used: q.next_used,
                    }),
                })
                .collect(),
        }
    }

    /// Restores `state` (from [`state`](Self::state), read back from a snapshot file) on this
    /// freshly created transport, whose device must be of the same type with the same
    /// features and queues.
    ///
    /// The registers and the interrupt status are set as the state says. If the device was
    /// started, it is started again as the driver's `DRIVER_OK` write did (the same checks of
    /// the features and of the queues against guest memory), with each queue at the state's
    /// ring positions; then each queue's notification eventfd is signalled once, so that
    /// buffers the guest made available before the snapshot are processed (a notification
    /// with nothing new is harmless), and, if an interrupt was pending, the interrupt eventfd
    /// too. Eventfds keep a signal until they are read, so the VMM may register them with KVM
    /// and the event loop before or after the restore.
    ///
    /// Any check that fails is an error, and the transport and its device are left as they
    /// were created (a device that refuses to start is an error here, not `DEVICE_NEEDS_RESET`).
    pub fn restore(&mut self, state: &MmioState) -> Result<(), MmioRestoreError> {
        if self.status != 0 || self.lock_device().is_activated() {
            return Err(MmioRestoreError::InUse {
                status: self.status,
            });
        }
        self.check(state)?;
        let result = self.apply(state);
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Checks `state` against this transport's device and for values no driver could set.
    fn check(&self, state: &MmioState) -> Result<(), MmioRestoreError> {
        if state.device_type != self.device_type {
            return Err(MmioRestoreError::DeviceType {
                snapshot: state.device_type,
                here: self.device_type,
            });
        }
        if state.device_features != self.device_features {
            return Err(MmioRestoreError::DeviceFeatures {
                snapshot: state.device_features,
                here: self.device_features,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(MmioRestoreError::QueueCount {
                snapshot: state.queues.len(),
                here: self.queues.len(),
            });
        }
        for (index, (ours, theirs)) in self.queues.iter().zip(&state.queues).enumerate() {
            if ours.max_size != theirs.max_size {
                return Err(MmioRestoreError::QueueMaxSize {
                    index,
                    snapshot: theirs.max_size,
                    here: ours.max_size,
                });
            }
        }
        // Only the transport sets DEVICE_NEEDS_RESET, when starting the device failed.
        let status = state.status;
        let needs_reset = status & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        if status & !(DRIVER_STATUS_BITS | VIRTIO_CONFIG_S_NEEDS_RESET) != 0
            || !in_init_order(status)
            || (needs_reset && status & VIRTIO_CONFIG_S_DRIVER_OK == 0)
        {
            return Err(MmioRestoreError::Status(status));
        }
        if status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && !self.driver_features_acceptable(state.driver_features)
        {
            return Err(MmioRestoreError::DriverFeatures(state.driver_features));
        }
        if state.interrupt_status & !INTERRUPT_STATUS_BITS != 0 {
            return Err(MmioRestoreError::InterruptStatus(state.interrupt_status));
        }
        for (index, queue) in state.queues.iter().enumerate() {
            match (state.device_started(), queue.rings.is_some()) {
                (true, false) => return Err(MmioRestoreError::MissingRings { index }),
                (false, true) => return Err(MmioRestoreError::UnexpectedRings { index }),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the registers from the checked `state` and starts the device if it was started.
    fn apply(&mut self, state: &MmioState) -> Result<(), MmioRestoreError> {
        for (queue, saved) in self.queues.iter_mut().zip(&state.queues) {
            *queue = QueueConfig {
                max_size: queue.max_size,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
        }
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.config_generation = state.config_generation;
        if state.device_started() {
            let mut queues = self.build_queues().map_err(MmioRestoreError::Activate)?;
            for (queue, saved) in queues.iter_mut().zip(&state.queues) {
                if let Some(rings) = saved.rings {
                    queue.set_next_avail(rings.next_avail);
                    queue.set_next_used(rings.next_used);
                }
            }
            self.start_device(queues)
                .map_err(MmioRestoreError::Activate)?;
            for evt in &self.queue_evts {
                evt.write(1).map_err(MmioRestoreError::Signal)?;
            }
        }
        self.interrupt
            .restore_status(state.interrupt_status)
            .map_err(MmioRestoreError::Signal)?;
        debug!(
            "virtio-mmio: restored device type {} in status {:#x}",
            self.device_type, self.status
        );
        Ok(())
    }
}

impl crate::Persist for MmioTransport {
    type State = MmioState;
    type Error = MmioRestoreError;

    fn save(&self) -> Result<MmioState, MmioRestoreError> {
        Ok(self.state())
    }

    fn restore(&mut self, state: &MmioState) -> Result<(), MmioRestoreError> {
        MmioTransport::restore(self, state)
    }
}
