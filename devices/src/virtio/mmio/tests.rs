//! The virtio-mmio transport against a fake device that records what it is told, and end to
//! end with a virtio-blk device.

use std::io;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as spec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::test_utils::mmio::{read32, setup_queue, write32, write_features};
use crate::virtio::test_utils::{r, w, GuestQueue};
use crate::virtio::{
    ActivateError, Block, QueueHandler, VirtioInterrupt, VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
};

mod state;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const MEM_SIZE: usize = 0x10_0000;
/// The size of the VMM's virtio-mmio slots (boot's `layout::VIRTIO_MMIO_SIZE_EACH`): the end
/// of the configuration space the guest can reach.
const SLOT_SIZE: u64 = 0x1000;
/// How long a test waits for an event it expects (the wait ends when the event comes).
const EVENT_TIMEOUT_MS: i32 = 5000;
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
    /// The queues it was started with.
    queues: Vec<Queue>,
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
        self.queues = queues;
        Ok(())
    }
    fn reset(&mut self) {
        self.calls.resets += 1;
        self.active = false;
        self.queues.clear();
    }
    fn is_activated(&self) -> bool {
        self.active
    }
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queues.iter().map(Queue::state).collect()
    }
    fn process_queue(&mut self, queue_index: usize) -> crate::virtio::QueueRun {
        self.calls.processed.push(queue_index);
        crate::virtio::QueueRun::default()
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
        let transport = MmioTransport::new(mem, device.clone(), irq).unwrap();
        Self { device, transport }
    }

    fn read(&mut self, offset: u64) -> u32 {
        read32(&mut self.transport, offset)
    }

    fn write(&mut self, offset: u64, value: u32) {
        write32(&mut self.transport, offset, value);
    }

    /// The notifications of queue `index` the transport signalled since the last call.
    fn notified(&self, index: usize) -> u64 {
        match self.transport.queue_evts()[index].read() {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("cannot read queue {index}'s eventfd: {e}"),
        }
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
    assert_eq!(f.transport.queue_evts().len(), 2);
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
    assert_eq!(f.notified(0), 0);

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
fn trapped_queue_notify_signals_the_queue_eventfd_once_started() {
    let mut f = Fixture::new();
    f.write(regs::QUEUE_NOTIFY, 0);
    f.negotiate(1 << 32);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.write(regs::QUEUE_NOTIFY, 1);
    assert_eq!([f.notified(0), f.notified(1)], [0, 0], "before DRIVER_OK");
    f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    f.write(regs::QUEUE_NOTIFY, 1);
    f.write(regs::QUEUE_NOTIFY, 0);
    f.write(regs::QUEUE_NOTIFY, 1);
    // Absent queues: ignored.
    f.write(regs::QUEUE_NOTIFY, 2);
    f.write(regs::QUEUE_NOTIFY, 0x1_0000);
    f.write(regs::QUEUE_NOTIFY, u32::MAX);
    assert_eq!([f.notified(0), f.notified(1)], [1, 2]);
    // The queues run on the event loop (the QueueHandler reading these eventfds), never here.
    assert!(f.calls().calls.processed.is_empty());
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
    f.transport.read(0, SLOT_SIZE - 4, &mut data);
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
    let mut t = MmioTransport::new(mem.clone(), device.clone(), irq.clone()).unwrap();

    assert_eq!(read32(&mut t, regs::DEVICE_ID), 2);
    assert_eq!(t.queue_evts().len(), 1);
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

    // The VMM's event loop, running the device's queue.
    let mut event_loop = EventManager::<Arc<Mutex<QueueHandler>>>::new().unwrap();
    event_loop.add_subscriber(Arc::new(Mutex::new(t.queue_handler().unwrap())));

    // A read of sectors 2..4, through a trapped QueueNotify write: the transport signals the
    // queue's eventfd and the event loop runs the queue.
    let mut q = GuestQueue::new(&mem, GuestAddress(0x1_0000), 256);
    let (hdr, data, status) = (0x4_0000, 0x5_0000, 0x6_0000);
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    header[8..].copy_from_slice(&2u64.to_le_bytes());
    mem.write_slice(&header, GuestAddress(hdr)).unwrap();
    q.set_used_event(0);
    let head = q.add_chain(&[r(hdr, 16), w(data, 1024), w(status, 1)]);
    write32(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(q.take_used(), [], "not on the vCPU thread");
    assert_eq!(event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(), 1);
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

    // process_queue on the shared device, as the event loop calls it, to see what it returns:
    // with EVENT_IDX the driver asks for the next interrupt by moving used_event.
    q.add_chain(&[r(hdr, 16), w(data, 512), w(status, 1)]);
    assert!(
        !t.device().lock().unwrap().process_queue(0).notified,
        "used_event is still 0"
    );
    assert_eq!(q.take_used().len(), 1);
    q.set_used_event(2);
    q.add_chain(&[r(hdr, 16), w(data, 512), w(status, 1)]);
    assert!(t.device().lock().unwrap().process_queue(0).notified);
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
