//! The virtio-over-MMIO transport, version 2 ("modern") register layout (virtio 1.2 §4.2).
//!
//! [`MmioTransport`] is only the register file: it answers the driver's register accesses,
//! negotiates features, collects each queue's size and ring addresses and, when the driver sets
//! `DRIVER_OK`, builds the [`Queue`]s and hands them to the [`VirtioDevice`]. The device logic
//! lives behind that trait.
//!
//! Wiring it into a VMM (the device occupies [`MMIO_REGION_SIZE`] bytes at `base`):
//! - insert the transport on the MMIO bus at `base` and tell the guest about it, e.g. on the
//!   kernel command line `virtio_mmio.device=4K@<base>:<gsi>`;
//! - register [`EventFdInterrupt::irqfd`] with KVM as an irqfd for `<gsi>`;
//! - for each queue `i` in `0..queue_count()`, register an ioeventfd on the 4-byte address
//!   `base + QUEUE_NOTIFY_OFFSET` with datamatch `i` (the driver writes the queue index there,
//!   §4.2.2) and, when it fires, lock [`MmioTransport::device`] and call
//!   [`VirtioDevice::process_queue`]`(i)`. A trapped write to `QueueNotify` (no ioeventfd) does
//!   the same from the vCPU thread.
//! - for each descriptor in [`VirtioDevice::backend_fds`] (virtio-net's TAP), follow the
//!   contract written there: poll it while [`VirtioDevice::backend_wanted`] says so, call
//!   [`VirtioDevice::process_backend`] when it is readable, and look at `backend_wanted`
//!   again after every event dispatched to the device.
//!
//! Everything the guest writes is untrusted: out-of-range selectors, accesses of the wrong size
//! and writes in the wrong device state are ignored (logged at debug level), never a panic.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{
    feature_bit, ActivateError, EventFdInterrupt, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::BusDevice;

/// Register offsets from the start of the device's MMIO region (virtio 1.2 §4.2.2, table
/// "MMIO Device Register Layout"). Every register is 32 bits wide and little-endian.
pub mod regs {
    /// R: `0x74726976` ("virt" in little-endian ASCII).
    pub const MAGIC_VALUE: u64 = 0x000;
    /// R: device version; 2 for the modern interface (1 was legacy).
    pub const VERSION: u64 = 0x004;
    /// R: virtio subsystem device ID (§5); 0 would mean "no device here".
    pub const DEVICE_ID: u64 = 0x008;
    /// R: virtio subsystem vendor ID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// R: 32 bits of the device's features, the half chosen by `DeviceFeaturesSel`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// W: which 32-bit half of the device features `DeviceFeatures` shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// W: 32 bits of the features the driver accepts, the half chosen by `DriverFeaturesSel`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// W: which 32-bit half of the driver features `DriverFeatures` sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// W: the queue the `Queue*` registers refer to (0-based).
    pub const QUEUE_SEL: u64 = 0x030;
    /// R: maximum size of the selected queue; 0 if the queue does not exist.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// W: size the driver chose for the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// RW: 1 once the driver has set up the selected queue; writing 0 takes it back.
    pub const QUEUE_READY: u64 = 0x044;
    /// W: the driver writes a queue index here to notify the device of new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// R: pending interrupt reasons (bit 0 used buffer, bit 1 configuration change).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// W: the interrupt reasons the driver has handled.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// RW: device status (§2.1); writing 0 resets the device.
    pub const STATUS: u64 = 0x070;
    /// W: low 32 bits of the selected queue's descriptor table address.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// W: high 32 bits of the selected queue's descriptor table address.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// W: low 32 bits of the selected queue's driver area (available ring) address.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// W: high 32 bits of the selected queue's driver area (available ring) address.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// W: low 32 bits of the selected queue's device area (used ring) address.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// W: high 32 bits of the selected queue's device area (used ring) address.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// R: changes whenever the configuration space may have changed (§2.5.1).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// RW: start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// `MagicValue`: "virt" (virtio 1.2 §4.2.2).
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) MMIO interface (virtio 1.2 §4.2.2).
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "QEMU" in little-endian ASCII, the value QEMU's virtio-mmio devices report; Linux
/// does not look at it.
pub const VENDOR_ID: u32 = 0x554d_4551;
/// Offset of the `QueueNotify` register, where the VMM registers its ioeventfds (§4.2.2).
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::QUEUE_NOTIFY;
/// Size of the MMIO region to reserve for one device: one page, registers plus configuration
/// space (the spec asks for at least 0x100 + the configuration space).
pub const MMIO_REGION_SIZE: u64 = 0x1000;

/// Device status bits the driver sets (virtio 1.2 §2.1); `DEVICE_NEEDS_RESET` is the device's.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// What the driver programmed for one queue; turned into a [`Queue`] on `DRIVER_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    /// `QueueNum` as written; checked (non-zero power of two, at most `max_size`) on activation.
    size: u32,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
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
    fn build(
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
fn set_half(addr: &mut u64, value: u32, high: bool) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(value)
    };
}

/// The virtio-mmio register file of one device (virtio 1.2 §4.2.2).
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<EventFdInterrupt>,
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
    /// guest through `interrupt` once the driver starts it.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<EventFdInterrupt>,
    ) -> Self {
        let (device_type, device_features, queues) = {
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
        Self {
            mem,
            device,
            interrupt,
            device_type,
            device_features,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// How many queues the device has; the VMM registers one ioeventfd for each.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device, shared with the VMM's event loop (which calls
    /// [`VirtioDevice::process_queue`] when a queue's ioeventfd fires).
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The interrupt whose eventfd the VMM registers as an irqfd.
    pub fn interrupt(&self) -> &Arc<EventFdInterrupt> {
        &self.interrupt
    }

    /// The device status register (virtio 1.2 §2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted (valid once `FEATURES_OK` is set).
    pub fn acked_features(&self) -> u64 {
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

    /// `QueueNotify` reached the transport (no ioeventfd caught it): process the queue here.
    fn notify(&mut self, value: u32) {
        let Some(index) = usize::try_from(value)
            .ok()
            .filter(|&i| i < self.queues.len())
        else {
            debug!("virtio-mmio: notify for absent queue {value}");
            return;
        };
        if !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK) {
            debug!("virtio-mmio: notify for queue {index} before DRIVER_OK");
            return;
        }
        self.lock_device().process_queue(index);
    }

    /// The driver accepts only features the device offers, and the modern interface needs
    /// `VIRTIO_F_VERSION_1` (virtio 1.2 §2.2.1, §4.2.3.1: "the device MUST NOT accept" others).
    fn driver_features_acceptable(&self) -> bool {
        let unoffered = self.driver_features & !self.device_features;
        if unoffered != 0 {
            debug!("virtio-mmio: driver accepted features {unoffered:#x} the device did not offer");
            return false;
        }
        if self.driver_features & feature_bit(VIRTIO_F_VERSION_1) == 0 {
            debug!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            return false;
        }
        true
    }

    /// A write to `Status` (virtio 1.2 §2.1, §3.1.1, §4.2.3.1).
    fn set_status(&mut self, value: u32) {
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
        // §3.1.1: ACKNOWLEDGE, then DRIVER, then FEATURES_OK, then DRIVER_OK.
        let has = |bit: u32| new & bit != 0;
        let in_order = (!has(VIRTIO_CONFIG_S_DRIVER) || has(VIRTIO_CONFIG_S_ACKNOWLEDGE))
            && (!has(VIRTIO_CONFIG_S_FEATURES_OK) || has(VIRTIO_CONFIG_S_DRIVER))
            && (!has(VIRTIO_CONFIG_S_DRIVER_OK) || has(VIRTIO_CONFIG_S_FEATURES_OK));
        if !in_order {
            debug!("virtio-mmio: status write {value:#x} skips an initialization step; ignored");
            return;
        }
        let setting = |new: u32, bit: u32| new & bit != 0 && old & bit == 0;
        if setting(new, VIRTIO_CONFIG_S_FEATURES_OK) && !self.driver_features_acceptable() {
            // §3.1.1 step 6: the driver re-reads Status and sees FEATURES_OK clear.
            new &= !(VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        }
        let activate = setting(new, VIRTIO_CONFIG_S_DRIVER_OK);
        self.status = (self.status & !DRIVER_STATUS_BITS) | new;
        if activate {
            if let Err(e) = self.activate() {
                warn!(
                    "virtio-mmio: cannot start device type {}: {e}",
                    self.device_type
                );
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
        let event_idx = self.driver_features & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, config)| config.build(index, &self.mem, event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let (mem, features) = (self.mem.clone(), self.driver_features);
        self.lock_device()
            .activate(mem, queues, features, interrupt)
    }

    /// Device reset (virtio 1.2 §2.4): the device drops its queues, every register goes back
    /// to its initial value and pending interrupts are cleared.
    fn reset(&mut self) {
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

#[cfg(test)]
mod tests {
    use std::io;

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_mmio as spec;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::test_utils::{r, w, GuestQueue};
    use crate::virtio::{Block, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

    const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
    const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
    const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
    const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
    const MEM_SIZE: usize = 0x10_0000;
    const FAKE_FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 3) | (1 << 40);

    /// A queue as the device got it: size, ready, descriptor table, available ring, used ring,
    /// EVENT_IDX.
    type QueueSeen = (u16, bool, u64, u64, u64, bool);

    /// What the transport did to the fake device.
    #[derive(Debug, Default)]
    struct Calls {
        activations: Vec<(u64, Vec<QueueSeen>)>,
        resets: usize,
        processed: Vec<usize>,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    /// A device with two queues (16 and 8 entries) and an 8-byte configuration space.
    #[derive(Default)]
    struct FakeDevice {
        calls: Calls,
        active: bool,
        refuse: bool,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            26
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn avail_features(&self) -> u64 {
            FAKE_FEATURES
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset
                    .checked_add(i as u64)
                    .filter(|&o| o < 8)
                    .map_or(0, |o| 0xc0 | o as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.calls.config_writes.push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            acked_features: u64,
            _interrupt: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            self.calls.activations.push((
                acked_features,
                queues
                    .iter()
                    .map(|q| {
                        let ready = q.ready();
                        (
                            q.size(),
                            ready,
                            q.desc_table(),
                            q.avail_ring(),
                            q.used_ring(),
                            q.event_idx_enabled(),
                        )
                    })
                    .collect(),
            ));
            if self.refuse {
                return Err(ActivateError::QueueNotReady { index: 1 });
            }
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.calls.resets += 1;
            self.active = false;
        }
        fn is_activated(&self) -> bool {
            self.active
        }
        fn process_queue(&mut self, queue_index: usize) -> bool {
            self.calls.processed.push(queue_index);
            false
        }
    }

    struct Fixture {
        device: Arc<Mutex<FakeDevice>>,
        transport: MmioTransport,
    }

    impl Fixture {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            let device = Arc::new(Mutex::new(FakeDevice::default()));
            let irq = Arc::new(EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
            let transport = MmioTransport::new(mem, device.clone(), irq);
            Self { device, transport }
        }

        fn read(&mut self, offset: u64) -> u32 {
            read32(&mut self.transport, offset)
        }

        fn write(&mut self, offset: u64, value: u32) {
            write32(&mut self.transport, offset, value);
        }

        fn calls(&self) -> std::sync::MutexGuard<'_, FakeDevice> {
            self.device.lock().unwrap()
        }

        /// ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK; returns the status read back.
        fn negotiate(&mut self, features: u64) -> u32 {
            self.write(regs::STATUS, ACK);
            self.write(regs::STATUS, ACK | DRIVER);
            write_features(&mut self.transport, features);
            self.write(regs::STATUS, ACK | DRIVER | FEATURES_OK);
            self.read(regs::STATUS)
        }

        /// Programs queue `index` the way Linux does.
        fn setup_queue(&mut self, index: u32, size: u32, base: u64) {
            setup_queue(&mut self.transport, index, size, base);
        }
    }

    fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0xffu8; 4];
        t.read(0xd000_0000, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(0xd000_0000, offset, &value.to_le_bytes());
    }

    fn write_features(t: &mut MmioTransport, features: u64) {
        write32(t, regs::DRIVER_FEATURES_SEL, 1);
        write32(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
        write32(t, regs::DRIVER_FEATURES_SEL, 0);
        write32(t, regs::DRIVER_FEATURES, features as u32);
    }

    /// Queue `index` of `size` entries with the layout of [`GuestQueue::new`] at `base`.
    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
        let desc = base;
        let avail = base + 16 * u64::from(size);
        let used = avail + 0x1000;
        write32(t, regs::QUEUE_SEL, index);
        assert_eq!(read32(t, regs::QUEUE_READY), 0);
        assert!(read32(t, regs::QUEUE_NUM_MAX) >= size);
        write32(t, regs::QUEUE_NUM, size);
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, desc),
            (regs::QUEUE_DRIVER_LOW, avail),
            (regs::QUEUE_DEVICE_LOW, used),
        ] {
            write32(t, low, addr as u32);
            write32(t, low + 4, (addr >> 32) as u32);
        }
        write32(t, regs::QUEUE_READY, 1);
        assert_eq!(read32(t, regs::QUEUE_READY), 1);
    }

    fn used_ring(base: u64, size: u32) -> u64 {
        base + 16 * u64::from(size) + 0x1000
    }

    #[test]
    fn register_offsets_match_the_spec_headers() {
        for (ours, theirs) in [
            (regs::MAGIC_VALUE, spec::VIRTIO_MMIO_MAGIC_VALUE),
            (regs::VERSION, spec::VIRTIO_MMIO_VERSION),
            (regs::DEVICE_ID, spec::VIRTIO_MMIO_DEVICE_ID),
            (regs::VENDOR_ID, spec::VIRTIO_MMIO_VENDOR_ID),
            (regs::DEVICE_FEATURES, spec::VIRTIO_MMIO_DEVICE_FEATURES),
            (
                regs::DEVICE_FEATURES_SEL,
                spec::VIRTIO_MMIO_DEVICE_FEATURES_SEL,
            ),
            (regs::DRIVER_FEATURES, spec::VIRTIO_MMIO_DRIVER_FEATURES),
            (
                regs::DRIVER_FEATURES_SEL,
                spec::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
            ),
            (regs::QUEUE_SEL, spec::VIRTIO_MMIO_QUEUE_SEL),
            (regs::QUEUE_NUM_MAX, spec::VIRTIO_MMIO_QUEUE_NUM_MAX),
            (regs::QUEUE_NUM, spec::VIRTIO_MMIO_QUEUE_NUM),
            (regs::QUEUE_READY, spec::VIRTIO_MMIO_QUEUE_READY),
            (regs::QUEUE_NOTIFY, spec::VIRTIO_MMIO_QUEUE_NOTIFY),
            (regs::INTERRUPT_STATUS, spec::VIRTIO_MMIO_INTERRUPT_STATUS),
            (regs::INTERRUPT_ACK, spec::VIRTIO_MMIO_INTERRUPT_ACK),
            (regs::STATUS, spec::VIRTIO_MMIO_STATUS),
            (regs::QUEUE_DESC_LOW, spec::VIRTIO_MMIO_QUEUE_DESC_LOW),
            (regs::QUEUE_DESC_HIGH, spec::VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (regs::QUEUE_DRIVER_LOW, spec::VIRTIO_MMIO_QUEUE_AVAIL_LOW),
            (regs::QUEUE_DRIVER_HIGH, spec::VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (regs::QUEUE_DEVICE_LOW, spec::VIRTIO_MMIO_QUEUE_USED_LOW),
            (regs::QUEUE_DEVICE_HIGH, spec::VIRTIO_MMIO_QUEUE_USED_HIGH),
            (regs::CONFIG_GENERATION, spec::VIRTIO_MMIO_CONFIG_GENERATION),
            (regs::CONFIG, spec::VIRTIO_MMIO_CONFIG),
        ] {
            assert_eq!(ours, u64::from(theirs));
        }
        const { assert!(MMIO_REGION_SIZE >= regs::CONFIG + 0x100) };
    }

    #[test]
    fn identification_registers() {
        let mut f = Fixture::new();
        assert_eq!(f.read(regs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(f.read(regs::MAGIC_VALUE).to_le_bytes(), *b"virt");
        assert_eq!(f.read(regs::VERSION), 2);
        assert_eq!(f.read(regs::DEVICE_ID), 26);
        assert_eq!(f.read(regs::VENDOR_ID), VENDOR_ID);
        assert_eq!(f.read(regs::CONFIG_GENERATION), 0);
        assert_eq!(f.read(regs::STATUS), 0);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), 0);
        assert_eq!(f.transport.queue_count(), 2);
        // Read-only registers ignore writes.
        f.write(regs::MAGIC_VALUE, 0);
        f.write(regs::DEVICE_ID, 1);
        f.write(regs::QUEUE_NUM_MAX, 1);
        assert_eq!(f.read(regs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(f.read(regs::DEVICE_ID), 26);
        assert_eq!(f.read(regs::QUEUE_NUM_MAX), 16);
        // Write-only, reserved and legacy registers read as zero.
        for offset in [
            regs::DEVICE_FEATURES_SEL,
            regs::DRIVER_FEATURES,
            regs::QUEUE_SEL,
            regs::QUEUE_NUM,
            regs::QUEUE_NOTIFY,
            regs::INTERRUPT_ACK,
            regs::QUEUE_DESC_LOW,
            regs::QUEUE_DEVICE_HIGH,
            0x28, // GuestPageSize (legacy)
            0x40, // QueuePFN (legacy)
            0xf8,
        ] {
            assert_eq!(f.read(offset), 0, "{offset:#x}");
        }
    }

    #[test]
    fn device_features_are_shown_in_halves() {
        let mut f = Fixture::new();
        assert_eq!(f.read(regs::DEVICE_FEATURES), FAKE_FEATURES as u32);
        f.write(regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(f.read(regs::DEVICE_FEATURES), (FAKE_FEATURES >> 32) as u32);
        for select in [2, u32::MAX] {
            f.write(regs::DEVICE_FEATURES_SEL, select);
            assert_eq!(f.read(regs::DEVICE_FEATURES), 0);
        }
    }

    #[test]
    fn register_accesses_other_than_aligned_dwords_are_ignored() {
        let mut f = Fixture::new();
        for len in [1, 2, 3, 8] {
            let mut data = vec![0xffu8; len];
            f.transport.read(0, regs::MAGIC_VALUE, &mut data);
            assert!(data.iter().all(|&b| b == 0), "{len}-byte read: {data:?}");
        }
        let mut data = [0xffu8; 4];
        f.transport.read(0, regs::MAGIC_VALUE + 2, &mut data);
        assert_eq!(data, [0; 4], "misaligned read");
        let mut empty = [];
        f.transport.read(0, regs::STATUS, &mut empty);

        // Byte, word, qword and misaligned writes to Status change nothing.
        f.transport.write(0, regs::STATUS, &[ACK as u8]);
        f.transport.write(0, regs::STATUS, &[ACK as u8, 0]);
        f.transport
            .write(0, regs::STATUS, &u64::from(ACK).to_le_bytes());
        f.transport.write(0, regs::STATUS + 1, &ACK.to_le_bytes());
        f.transport.write(0, regs::STATUS, &[]);
        assert_eq!(f.read(regs::STATUS), 0);
        f.write(regs::STATUS, ACK);
        assert_eq!(f.read(regs::STATUS), ACK);
    }

    #[test]
    fn accepted_features_reach_the_device() {
        let mut f = Fixture::new();
        let wanted = (1 << 32) | (1 << 3) | (1 << 29);
        assert_eq!(f.negotiate(wanted), ACK | DRIVER | FEATURES_OK);
        assert_eq!(f.transport.acked_features(), wanted);
        f.setup_queue(0, 16, 0x1_0000);
        f.setup_queue(1, 8, 0x2_0000);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        let calls = &f.calls().calls;
        assert_eq!(calls.activations.len(), 1);
        let (features, queues) = &calls.activations[0];
        assert_eq!(*features, wanted);
        assert_eq!(
            queues,
            &[
                (16, true, 0x1_0000, 0x1_0100, 0x1_1100, true),
                (8, true, 0x2_0000, 0x2_0080, 0x2_1080, true),
            ],
            "sizes, addresses and EVENT_IDX as programmed"
        );
    }

    #[test]
    fn unoffered_features_are_refused() {
        // Bit 0 is not offered; bit 63 neither; and VERSION_1 is required.
        for features in [(1 << 32) | 1, (1 << 32) | (1 << 63), 1 << 3, 0] {
            let mut f = Fixture::new();
            let status = f.negotiate(features);
            assert_eq!(
                status,
                ACK | DRIVER,
                "features {features:#x}: FEATURES_OK must stay clear"
            );
            // DRIVER_OK cannot follow.
            f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
            assert_eq!(f.read(regs::STATUS) & (FEATURES_OK | DRIVER_OK), 0);
            assert!(f.calls().calls.activations.is_empty());
            // The driver may fix its features and try again.
            write_features(&mut f.transport, 1 << 32);
            f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK);
            assert_eq!(f.read(regs::STATUS), ACK | DRIVER | FEATURES_OK);
        }
    }

    #[test]
    fn driver_features_are_writable_only_between_driver_and_features_ok() {
        let mut f = Fixture::new();
        write_features(&mut f.transport, 1 << 3);
        assert_eq!(f.transport.acked_features(), 0, "before DRIVER");
        assert_eq!(f.negotiate(1 << 32), ACK | DRIVER | FEATURES_OK);
        write_features(&mut f.transport, FAKE_FEATURES);
        assert_eq!(f.transport.acked_features(), 1 << 32, "after FEATURES_OK");
        // An absent half is ignored.
        let mut f = Fixture::new();
        f.write(regs::STATUS, ACK);
        f.write(regs::STATUS, ACK | DRIVER);
        f.write(regs::DRIVER_FEATURES_SEL, 2);
        f.write(regs::DRIVER_FEATURES, u32::MAX);
        assert_eq!(f.transport.acked_features(), 0);
    }

    #[test]
    fn status_follows_the_initialization_order() {
        let mut f = Fixture::new();
        // Skipping ACKNOWLEDGE or DRIVER, or DRIVER_OK before FEATURES_OK: ignored.
        for value in [DRIVER, ACK | FEATURES_OK, ACK | DRIVER | DRIVER_OK] {
            f.write(regs::STATUS, value);
            assert_eq!(f.read(regs::STATUS), 0, "{value:#x}");
        }
        f.write(regs::STATUS, ACK | DRIVER);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER);
        // Clearing a bit other than by writing 0: ignored.
        f.write(regs::STATUS, ACK);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER);
        // Device-owned bits cannot be set by the driver.
        f.write(regs::STATUS, ACK | DRIVER | NEEDS_RESET);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER);
        // FAILED is accepted at any point.
        f.write(regs::STATUS, ACK | DRIVER | FAILED);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER | FAILED);
        assert!(f.calls().calls.activations.is_empty());
    }

    #[test]
    fn queue_select_out_of_range() {
        let mut f = Fixture::new();
        assert_eq!(f.negotiate(1 << 32), ACK | DRIVER | FEATURES_OK);
        for select in [2, 3, 0x8000, u32::MAX] {
            f.write(regs::QUEUE_SEL, select);
            assert_eq!(f.read(regs::QUEUE_NUM_MAX), 0, "queue {select}");
            for offset in [
                regs::QUEUE_NUM,
                regs::QUEUE_READY,
                regs::QUEUE_DESC_LOW,
                regs::QUEUE_DESC_HIGH,
                regs::QUEUE_DRIVER_LOW,
                regs::QUEUE_DRIVER_HIGH,
                regs::QUEUE_DEVICE_LOW,
                regs::QUEUE_DEVICE_HIGH,
            ] {
                f.write(offset, 1);
            }
            assert_eq!(f.read(regs::QUEUE_READY), 0);
            f.write(regs::QUEUE_NOTIFY, select);
        }
        f.write(regs::QUEUE_SEL, 0);
        assert_eq!(f.read(regs::QUEUE_NUM_MAX), 16);
        f.write(regs::QUEUE_SEL, 1);
        assert_eq!(f.read(regs::QUEUE_NUM_MAX), 8);
        assert!(f.calls().calls.processed.is_empty());
    }

    #[test]
    fn queue_registers_change_only_while_allowed() {
        let mut f = Fixture::new();
        // Before FEATURES_OK: ignored.
        f.write(regs::STATUS, ACK);
        f.write(regs::STATUS, ACK | DRIVER);
        f.write(regs::QUEUE_SEL, 0);
        f.write(regs::QUEUE_READY, 1);
        assert_eq!(f.read(regs::QUEUE_READY), 0);
        write_features(&mut f.transport, 1 << 32);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK);

        f.setup_queue(0, 8, 0x1_0000);
        f.setup_queue(1, 4, 0x2_0000);
        // While queue 0 is ready, its size and addresses are frozen ...
        f.write(regs::QUEUE_SEL, 0);
        f.write(regs::QUEUE_NUM, 16);
        f.write(regs::QUEUE_DESC_LOW, 0x5_0000);
        f.write(regs::QUEUE_DRIVER_HIGH, 1);
        f.write(regs::QUEUE_DEVICE_LOW, 0x6_0000);
        // ... and QueueReady = 0 takes it back, after which a new size sticks.
        f.write(regs::QUEUE_SEL, 1);
        f.write(regs::QUEUE_READY, 0);
        assert_eq!(f.read(regs::QUEUE_READY), 0);
        f.write(regs::QUEUE_NUM, 8);
        f.write(regs::QUEUE_READY, 1);

        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        // After DRIVER_OK: nothing changes.
        f.write(regs::QUEUE_SEL, 0);
        f.write(regs::QUEUE_READY, 0);
        assert_eq!(f.read(regs::QUEUE_READY), 1);

        let calls = &f.calls().calls;
        assert_eq!(
            calls.activations[0].1,
            [
                (8, true, 0x1_0000, 0x1_0080, 0x1_1080, false),
                (8, true, 0x2_0000, 0x2_0040, 0x2_1040, false),
            ]
        );
    }

    #[test]
    fn unready_queues_are_passed_unready() {
        let mut f = Fixture::new();
        f.negotiate(1 << 32);
        f.setup_queue(0, 16, 0x1_0000);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        let calls = &f.calls().calls;
        assert_eq!(
            calls.activations[0].1[1].0, 8,
            "default size is the maximum"
        );
        assert!(!calls.activations[0].1[1].1);
    }

    /// Starts the fake device with queue 0 configured by `program` and returns the fixture.
    fn start_with(program: impl FnOnce(&mut Fixture)) -> Fixture {
        let mut f = Fixture::new();
        f.negotiate(1 << 32);
        f.write(regs::QUEUE_SEL, 0);
        program(&mut f);
        f.write(regs::QUEUE_READY, 1);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        f
    }

    fn assert_needs_reset(f: &mut Fixture) {
        assert_eq!(
            f.read(regs::STATUS),
            ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
        );
        assert_eq!(f.read(regs::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(f.transport.interrupt().irqfd().read().unwrap(), 1);
    }

    #[test]
    fn bad_queue_configuration_needs_reset() {
        type Program = fn(&mut Fixture);
        let cases: [(&str, Program); 6] = [
            ("rings outside memory", |f| {
                f.write(regs::QUEUE_DESC_LOW, MEM_SIZE as u32);
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
            }),
            ("rings above 4 GiB", |f| {
                f.write(regs::QUEUE_DESC_HIGH, 1);
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
            }),
            ("size not a power of two", |f| {
                f.write(regs::QUEUE_NUM, 3);
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
            }),
            ("size above the maximum", |f| {
                f.write(regs::QUEUE_NUM, 0x1_0000);
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
            }),
            ("size zero", |f| {
                f.write(regs::QUEUE_NUM, 0);
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
            }),
            ("misaligned used ring", |f| {
                f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
                f.write(regs::QUEUE_DEVICE_LOW, 0x2002);
            }),
        ];
        for (name, program) in cases {
            let mut f = start_with(program);
            assert!(f.calls().calls.activations.is_empty(), "{name}");
            assert_needs_reset(&mut f);
        }
        // The same with good values starts the device.
        let mut f = start_with(|f| {
            f.write(regs::QUEUE_DRIVER_LOW, 0x1000);
            f.write(regs::QUEUE_DEVICE_LOW, 0x2000);
        });
        assert_eq!(f.calls().calls.activations.len(), 1);
        assert_eq!(f.read(regs::STATUS) & NEEDS_RESET, 0);
    }

    #[test]
    fn device_refusing_to_start_needs_reset_and_reset_recovers() {
        let mut f = Fixture::new();
        f.device.lock().unwrap().refuse = true;
        f.negotiate(1 << 32);
        f.setup_queue(0, 16, 0x1_0000);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_needs_reset(&mut f);
        assert!(!f.calls().active);

        // The driver resets; NEEDS_RESET and the interrupt status go, the device starts.
        f.write(regs::STATUS, 0);
        assert_eq!(f.read(regs::STATUS), 0);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), 0);
        f.device.lock().unwrap().refuse = false;
        f.negotiate(1 << 32);
        f.setup_queue(0, 16, 0x1_0000);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(f.read(regs::STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(f.calls().active);
    }

    #[test]
    fn writing_zero_to_status_resets_everything() {
        let mut f = Fixture::new();
        f.negotiate((1 << 32) | (1 << 3));
        f.setup_queue(0, 16, 0x1_0000);
        f.setup_queue(1, 8, 0x2_0000);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        f.transport.interrupt().signal_used_queue().unwrap();
        f.write(regs::DEVICE_FEATURES_SEL, 1);
        assert!(f.calls().active);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);

        f.write(regs::STATUS, 0);
        assert_eq!(f.calls().calls.resets, 1);
        assert!(!f.calls().active);
        assert_eq!(f.read(regs::STATUS), 0);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), 0);
        assert_eq!(f.transport.acked_features(), 0);
        assert_eq!(
            f.read(regs::DEVICE_FEATURES),
            FAKE_FEATURES as u32,
            "select back to 0"
        );
        for q in 0..2 {
            f.write(regs::QUEUE_SEL, q);
            assert_eq!(f.read(regs::QUEUE_READY), 0);
        }
        // Notifications no longer reach the device.
        f.write(regs::QUEUE_NOTIFY, 0);
        assert!(f.calls().calls.processed.is_empty());

        // The driver starts over; queues default to their maximum size again.
        f.negotiate(1 << 32);
        f.write(regs::QUEUE_SEL, 0);
        f.write(regs::QUEUE_DESC_LOW, 0x1_0000);
        f.write(regs::QUEUE_DRIVER_LOW, 0x1_1000);
        f.write(regs::QUEUE_DEVICE_LOW, 0x1_2000);
        f.write(regs::QUEUE_READY, 1);
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        let calls = &f.calls().calls;
        assert_eq!(calls.activations.len(), 2);
        assert_eq!(calls.activations[1].0, 1 << 32);
        assert_eq!(
            calls.activations[1].1,
            [
                (16, true, 0x1_0000, 0x1_1000, 0x1_2000, false),
                (8, false, 0, 0, 0, false),
            ]
        );
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut f = Fixture::new();
        let irq = f.transport.interrupt().clone();
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(f.read(regs::INTERRUPT_STATUS), 3);
        f.write(regs::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        f.write(regs::INTERRUPT_ACK, u32::MAX);
        assert_eq!(f.read(regs::INTERRUPT_STATUS), 0);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
    }

    #[test]
    fn queue_notify_processes_the_queue_once_started() {
        let mut f = Fixture::new();
        f.write(regs::QUEUE_NOTIFY, 0);
        f.negotiate(1 << 32);
        f.setup_queue(0, 16, 0x1_0000);
        f.setup_queue(1, 8, 0x2_0000);
        f.write(regs::QUEUE_NOTIFY, 1);
        assert!(f.calls().calls.processed.is_empty(), "before DRIVER_OK");
        f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        f.write(regs::QUEUE_NOTIFY, 1);
        f.write(regs::QUEUE_NOTIFY, 0);
        f.write(regs::QUEUE_NOTIFY, 2);
        f.write(regs::QUEUE_NOTIFY, u32::MAX);
        assert_eq!(f.calls().calls.processed, [1, 0]);
    }

    #[test]
    fn config_space_accesses() {
        let mut f = Fixture::new();
        for (len, expected) in [
            (1, vec![0xc2]),
            (2, vec![0xc2, 0xc3]),
            (4, vec![0xc2, 0xc3, 0xc4, 0xc5]),
            (8, vec![0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0, 0]),
            (3, vec![0, 0, 0]),
        ] {
            let mut data = vec![0xffu8; len];
            f.transport.read(0, regs::CONFIG + 2, &mut data);
            assert_eq!(data, expected, "{len}-byte read");
        }
        let mut data = [0xffu8; 4];
        f.transport.read(0, MMIO_REGION_SIZE - 4, &mut data);
        assert_eq!(data, [0; 4]);

        f.transport.write(0, regs::CONFIG + 1, &[1, 2]);
        f.transport.write(0, regs::CONFIG + 4, &[9; 4]);
        f.transport.write(0, regs::CONFIG, &[1, 2, 3]);
        assert_eq!(
            f.calls().calls.config_writes,
            [(1, vec![1, 2]), (4, vec![9; 4])]
        );
    }

    #[test]
    fn block_device_end_to_end() {
        let tmp = TempFile::new().unwrap();
        let image: Vec<u8> = (0..64 * 512u32)
            .map(|i| (i / 512) as u8 ^ (i % 256) as u8)
            .collect();
        std::fs::write(tmp.as_path(), &image).unwrap();
        let block = Block::new(
            std::fs::File::open(tmp.as_path()).unwrap(),
            true,
            Some("e2e".into()),
        )
        .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
        let irq = Arc::new(EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(mem.clone(), device.clone(), irq.clone());

        assert_eq!(read32(&mut t, regs::DEVICE_ID), 2);
        assert_eq!(t.queue_count(), 1);
        let mut capacity = [0u8; 8];
        t.read(0, regs::CONFIG, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 64);

        // What Linux's virtio_mmio + virtio_blk do at probe.
        write32(&mut t, regs::STATUS, ACK);
        write32(&mut t, regs::STATUS, ACK | DRIVER);
        let mut offered = 0u64;
        for half in 0..2 {
            write32(&mut t, regs::DEVICE_FEATURES_SEL, half);
            offered |= u64::from(read32(&mut t, regs::DEVICE_FEATURES)) << (32 * half);
        }
        assert_ne!(offered & (1 << 5), 0, "VIRTIO_BLK_F_RO");
        write_features(&mut t, offered);
        write32(&mut t, regs::STATUS, ACK | DRIVER | FEATURES_OK);
        assert_eq!(read32(&mut t, regs::STATUS), ACK | DRIVER | FEATURES_OK);
        setup_queue(&mut t, 0, 256, 0x1_0000);
        write32(&mut t, regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(
            read32(&mut t, regs::STATUS),
            ACK | DRIVER | FEATURES_OK | DRIVER_OK
        );
        assert!(device.lock().unwrap().is_activated());

        // A read of sectors 2..4, through a trapped QueueNotify write.
        let mut q = GuestQueue::new(&mem, GuestAddress(0x1_0000), 256);
        let (hdr, data, status) = (0x4_0000, 0x5_0000, 0x6_0000);
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        header[8..].copy_from_slice(&2u64.to_le_bytes());
        mem.write_slice(&header, GuestAddress(hdr)).unwrap();
        q.set_used_event(0);
        let head = q.add_chain(&[r(hdr, 16), w(data, 1024), w(status, 1)]);
        write32(&mut t, regs::QUEUE_NOTIFY, 0);
        assert_eq!(q.take_used(), [(u32::from(head), 1025)]);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        assert_eq!(got, image[1024..2048]);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(used_ring(0x1_0000, 256)))
                .unwrap(),
            0,
            "EVENT_IDX leaves the used flags alone"
        );

        // The guest sees the interrupt, reads the reason and acknowledges it.
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        assert_eq!(
            read32(&mut t, regs::INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        write32(&mut t, regs::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(read32(&mut t, regs::INTERRUPT_STATUS), 0);

        // The VMM's event loop path: process_queue on the shared device. With EVENT_IDX the
        // driver asks for the next interrupt by moving used_event.
        q.add_chain(&[r(hdr, 16), w(data, 512), w(status, 1)]);
        assert!(
            !t.device().lock().unwrap().process_queue(0),
            "used_event is still 0"
        );
        assert_eq!(q.take_used().len(), 1);
        q.set_used_event(2);
        q.add_chain(&[r(hdr, 16), w(data, 512), w(status, 1)]);
        assert!(t.device().lock().unwrap().process_queue(0));
        assert_eq!(q.take_used().len(), 1);
        assert_eq!(
            irq.irqfd().read().map_err(|e| e.kind()),
            Ok(1),
            "one more interrupt"
        );
        assert_eq!(
            irq.irqfd().read().map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );

        // Reset: the device drops its queue.
        write32(&mut t, regs::STATUS, 0);
        assert!(!device.lock().unwrap().is_activated());
    }
}
