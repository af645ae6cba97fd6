//! Register offsets from the start of the device's MMIO region (virtio 1.2 §4.2.2, table
//! "MMIO Device Register Layout"). Every register is 32 bits wide and little-endian.

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
