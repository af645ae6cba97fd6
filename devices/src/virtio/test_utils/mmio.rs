//! The driver side of the virtio-mmio transport, for unit tests: register accesses, feature
//! negotiation and queue setup the way Linux's virtio_mmio does them (virtio 1.2 §3.1.1,
//! §4.2.3).

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};

use crate::virtio::mmio::{regs, MmioTransport};
use crate::BusDevice;

/// Reads the 32-bit register at `offset`.
pub fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0xffu8; 4];
    t.read(0xd000_0000, offset, &mut data);
    u32::from_le_bytes(data)
}

/// Writes the 32-bit register at `offset`.
pub fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(0xd000_0000, offset, &value.to_le_bytes());
}

/// Writes the features the driver accepts, high half first.
pub fn write_features(t: &mut MmioTransport, features: u64) {
    write32(t, regs::DRIVER_FEATURES_SEL, 1);
    write32(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
    write32(t, regs::DRIVER_FEATURES_SEL, 0);
    write32(t, regs::DRIVER_FEATURES, features as u32);
}

/// Queue `index` of `size` entries with the layout of [`GuestQueue::new`](super::GuestQueue::new) at `base`.
pub fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, base: u64) {
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

/// Starts the device the way Linux does: ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK, queue
/// `i` of `queues[i].0` entries at `queues[i].1` (see [`setup_queue`]), DRIVER_OK. Panics if
/// the device did not take it.
pub fn start_device(t: &mut MmioTransport, features: u64, queues: &[(u32, u64)]) {
    let ack = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    let driver = ack | VIRTIO_CONFIG_S_DRIVER;
    let features_ok = driver | VIRTIO_CONFIG_S_FEATURES_OK;
    write32(t, regs::STATUS, ack);
    write32(t, regs::STATUS, driver);
    write_features(t, features);
    write32(t, regs::STATUS, features_ok);
    assert_eq!(
        read32(t, regs::STATUS),
        features_ok,
        "features {features:#x} refused"
    );
    for (index, &(size, base)) in queues.iter().enumerate() {
        setup_queue(t, index as u32, size, base);
    }
    let driver_ok = features_ok | VIRTIO_CONFIG_S_DRIVER_OK;
    write32(t, regs::STATUS, driver_ok);
    assert_eq!(
        read32(t, regs::STATUS),
        driver_ok,
        "the device did not start"
    );
}
