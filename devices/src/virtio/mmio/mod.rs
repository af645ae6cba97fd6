//! The virtio-over-MMIO transport, version 2 ("modern") register layout (virtio 1.2 §4.2).
//!
//! [`MmioTransport`] is only the register file: it answers the driver's register accesses,
//! negotiates features, collects each queue's size and ring addresses and, when the driver sets
//! `DRIVER_OK`, builds the [`Queue`](super::Queue)s and hands them to the [`VirtioDevice`]. The
//! device logic lives behind that trait.
//!
//! Wiring it into a VMM, at a slot `base` of the guest's MMIO space that holds the registers
//! and, from [`regs::CONFIG`] (0x100) on, the device's configuration space (how big a slot is
//! belongs to the VMM's memory layout):
//! - insert the transport on the MMIO bus at `base` and tell the guest about it, e.g. on the
//!   kernel command line `virtio_mmio.device=4K@<base>:<gsi>`;
//! - register an eventfd with KVM as an irqfd for `<gsi>` and give it to the transport in an
//!   [`EventFdInterrupt`];
//! - register each of [`MmioTransport::queue_evts`] (eventfd `i` for queue `i`) with KVM as an
//!   ioeventfd on the 4-byte address `base + QUEUE_NOTIFY_OFFSET` with datamatch `i` (the
//!   driver writes the queue index there, §4.2.2). A `QueueNotify` write that reaches the
//!   transport anyway (no ioeventfd matched it) signals the same eventfd;
//! - add [`MmioTransport::queue_handler`] to the event loop: it processes the queues when
//!   their eventfds fire and polls the device's backend descriptors as
//!   [`VirtioDevice::backend_wanted`] says. No queue is processed anywhere else.
//!
//! A snapshot of the transport and its device's queues is an [`MmioState`]
//! ([`MmioTransport::state`], [`MmioTransport::restore`], in `state.rs`).
//!
//! Everything the guest writes is untrusted: out-of-range selectors, accesses of the wrong size
//! and writes in the wrong device state are ignored (logged at debug level), never a panic.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{EventFdInterrupt, QueueHandler, VirtioDevice};
use crate::BusDevice;
use queue_config::{set_half, QueueConfig};
pub use state::{MmioQueueState, MmioRestoreError, MmioState, RingIndices};

mod queue_config;
pub mod regs;
mod state;
mod status;
#[cfg(test)]
mod tests;

/// `MagicValue`: "virt" (virtio 1.2 §4.2.2).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) MMIO interface (virtio 1.2 §4.2.2).
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "QEMU" in little-endian ASCII, the value QEMU's virtio-mmio devices report; Linux
/// does not look at it.
pub const VENDOR_ID: u32 = 0x554d_4551;
/// Offset of the `QueueNotify` register, where the VMM registers its ioeventfds (§4.2.2).
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::QUEUE_NOTIFY;

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue's notification eventfd could not be created or duplicated.
    #[error("cannot set up the notification eventfd of virtio queue {queue}")]
    QueueEventFd {
        /// Index of the queue.
        queue: usize,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// The virtio-mmio register file of one device (virtio 1.2 §4.2.2).
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<EventFdInterrupt>,
    /// One per queue, in queue order: a notification of queue `i` signals `queue_evts[i]`,
    /// whether KVM caught the `QueueNotify` write (an ioeventfd on this eventfd) or the write
    /// reached the transport.
    queue_evts: Vec<EventFd>,
    // Copied from the device at creation, so register reads never wait for the device lock
    // (which the VMM's event loop holds while it does I/O).
    device_type: u32,
    device_features: u64,
    queues: Vec<QueueConfig>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    /// Stays 0: no device here changes its configuration space after creation (§2.5.1).
    config_generation: u32,
    /// Whether a failed start was logged at warn level already: the guest can repeat one at
    /// will, so later ones go to the debug level.
    start_failure_logged: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field(
                "driver_features",
                &format_args!("{:#x}", self.driver_features),
            )
            .field("status", &format_args!("{:#x}", self.status))
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Creates the register file for `device`, which will see guest memory `mem` and signal the
    /// guest through `interrupt` once the driver starts it, and one notification eventfd for
    /// each of the device's queues.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<EventFdInterrupt>,
    ) -> Result<Self, MmioError> {
        let (device_type, device_features, queues): (_, _, Vec<_>) = {
            let dev = device.lock().unwrap_or_else(PoisonError::into_inner);
            (
                dev.device_type(),
                dev.avail_features(),
                dev.queue_max_sizes()
                    .iter()
                    .map(|&max| QueueConfig::new(max))
                    .collect(),
            )
        };
        let queue_evts = (0..queues.len())
            .map(|queue| {
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|source| MmioError::QueueEventFd { queue, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mem,
            device,
            interrupt,
            queue_evts,
            device_type,
            device_features,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            start_failure_logged: false,
        })
    }

    /// The notification eventfd of each queue, in queue order. The VMM registers eventfd `i`
    /// with KVM as an ioeventfd on the 4-byte `QueueNotify` register ([`QUEUE_NOTIFY_OFFSET`])
    /// with datamatch `i`; a `QueueNotify` write that reaches the transport instead signals
    /// the same eventfd.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The event-loop subscriber that runs the device: it watches (duplicates of) this
    /// transport's queue eventfds and the device's backend descriptors. All of the device's
    /// queue processing happens there.
    pub fn queue_handler(&self) -> Result<QueueHandler, MmioError> {
        let queue_evts = self
            .queue_evts
            .iter()
            .enumerate()
            .map(|(queue, evt)| {
                evt.try_clone()
                    .map_err(|source| MmioError::QueueEventFd { queue, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(QueueHandler::new(self.device.clone(), queue_evts))
    }

    /// The device, shared with the VMM's event loop.
    #[cfg(test)]
    pub(crate) fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The interrupt the device signals the guest through.
    #[cfg(test)]
    pub(crate) fn interrupt(&self) -> &Arc<EventFdInterrupt> {
        &self.interrupt
    }

    /// The features the driver accepted (valid once `FEATURES_OK` is set).
    #[cfg(test)]
    pub(crate) fn acked_features(&self) -> u64 {
        self.driver_features
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        // A device that panicked left its lock poisoned; its state is whatever it was, and
        // that must not take the vCPU thread down too.
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// The selected queue, if it exists and the driver may change it now: after `FEATURES_OK`
    /// and before `DRIVER_OK` (§3.1.1 steps 7-8, §4.2.3.2).
    fn configurable_queue(&mut self, register: &str) -> Option<&mut QueueConfig> {
        if !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            || self.has_status(VIRTIO_CONFIG_S_DRIVER_OK)
        {
            debug!(
                "virtio-mmio: {register} write ignored in device status {:#x}",
                self.status
            );
            return None;
        }
        let select = self.queue_select;
        let queue = usize::try_from(select)
            .ok()
            .and_then(|i| self.queues.get_mut(i));
        if queue.is_none() {
            debug!("virtio-mmio: {register} write ignored for absent queue {select}");
        }
        queue
    }

    /// The selected queue, if it may change and is not ready (§4.2.2: the driver must not
    /// change a queue's size or addresses while `QueueReady` is 1).
    fn configurable_idle_queue(&mut self, register: &str) -> Option<&mut QueueConfig> {
        match self.configurable_queue(register) {
            Some(queue) if queue.ready => {
                debug!("virtio-mmio: {register} write ignored: queue is ready");
                None
            }
            other => other,
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => usize::try_from(self.queue_select)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => usize::try_from(self.queue_select)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of unknown or write-only register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::DRIVER_FEATURES => {
                // §3.1.1 step 5 / §2.2.1: features are written after DRIVER and before
                // FEATURES_OK; later writes would change what the device already accepted.
                if !self.has_status(VIRTIO_CONFIG_S_DRIVER)
                    || self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
                {
                    debug!(
                        "virtio-mmio: DriverFeatures write ignored in device status {:#x}",
                        self.status
                    );
                    return;
                }
                match self.driver_features_select {
                    0 => set_half(&mut self.driver_features, value, false),
                    1 => set_half(&mut self.driver_features, value, true),
                    select => debug!("virtio-mmio: DriverFeatures write to absent half {select}"),
                }
            }
            regs::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::QUEUE_SEL => self.queue_select = value,
            regs::QUEUE_NUM => {
                if let Some(queue) = self.configurable_idle_queue("QueueNum") {
                    queue.size = value;
                }
            }
            regs::QUEUE_READY => {
                if let Some(queue) = self.configurable_queue("QueueReady") {
                    queue.ready = value == 1;
                }
            }
            regs::QUEUE_NOTIFY => self.notify(value),
            regs::INTERRUPT_ACK => self.interrupt.ack(value),
            regs::STATUS => self.set_status(value),
            regs::QUEUE_DESC_LOW | regs::QUEUE_DESC_HIGH => {
                if let Some(queue) = self.configurable_idle_queue("QueueDesc") {
                    set_half(
                        &mut queue.desc_table,
                        value,
                        offset == regs::QUEUE_DESC_HIGH,
                    );
                }
            }
            regs::QUEUE_DRIVER_LOW | regs::QUEUE_DRIVER_HIGH => {
                if let Some(queue) = self.configurable_idle_queue("QueueDriver") {
                    set_half(
                        &mut queue.avail_ring,
                        value,
                        offset == regs::QUEUE_DRIVER_HIGH,
                    );
                }
            }
            regs::QUEUE_DEVICE_LOW | regs::QUEUE_DEVICE_HIGH => {
                if let Some(queue) = self.configurable_idle_queue("QueueDevice") {
                    set_half(
                        &mut queue.used_ring,
                        value,
                        offset == regs::QUEUE_DEVICE_HIGH,
                    );
                }
            }
            _ => debug!(
                "virtio-mmio: write of {value:#x} to unknown or read-only register {offset:#x}"
            ),
        }
    }

    /// `QueueNotify` reached the transport (no ioeventfd caught it): signal the queue's
    /// eventfd, as KVM does for an ioeventfd, so that the queue is processed on the event loop
    /// like every other notification. The transport never processes a queue itself.
    fn notify(&mut self, value: u32) {
        let Some(evt) = usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        else {
            debug!("virtio-mmio: notify for absent queue {value}");
            return;
        };
        if !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK) {
            debug!("virtio-mmio: notify for queue {value} before DRIVER_OK");
            return;
        }
        if let Err(e) = evt.write(1) {
            warn!("virtio-mmio: cannot signal the notification eventfd of queue {value}: {e}");
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            // §4.2.2: the configuration space allows byte, word and dword accesses (and Linux
            // reads a u64 as two dwords); any size the bus hands us is passed on.
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.lock_device().read_config(offset - regs::CONFIG, data);
            } else {
                debug!(
                    "virtio-mmio: {}-byte config read at {offset:#x}",
                    data.len()
                );
                data.fill(0);
            }
            return;
        }
        // §4.2.2: registers are accessed as aligned 32-bit words only.
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => {
                *word = self.read_register(offset).to_le_bytes()
            }
            _ => {
                debug!(
                    "virtio-mmio: {}-byte register read at {offset:#x} ignored",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.lock_device().write_config(offset - regs::CONFIG, data);
            } else {
                debug!(
                    "virtio-mmio: {}-byte config write at {offset:#x}",
                    data.len()
                );
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(word))
            }
            _ => debug!(
                "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}
