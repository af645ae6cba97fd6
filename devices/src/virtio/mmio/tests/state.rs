//! Snapshot and restore of the transport (`state.rs`): on the fake device, end to end with
//! virtio-blk, and virtio-net's offloads.

use super::*;
use crate::virtio::mmio::{MmioRestoreError, MmioState, RingIndices};
use crate::virtio::net::{tap_offload_flags, Net, AVAIL_FEATURES};
use crate::virtio::test_utils::mmio::start_device;
use crate::virtio::test_utils::net::Mock;

const EVENT_IDX: u64 = 1 << 29;
const VERSION_1: u64 = 1 << 32;

/// Registers a driver can read, to compare two transports.
const READABLE: [u64; 7] = [
    regs::DEVICE_ID,
    regs::DEVICE_FEATURES,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_READY,
    regs::INTERRUPT_STATUS,
    regs::STATUS,
    regs::CONFIG_GENERATION,
];

fn readable(f: &mut Fixture) -> Vec<u32> {
    READABLE.iter().map(|&offset| f.read(offset)).collect()
}

/// The fake device started with both queues and EVENT_IDX, its device at ring positions
/// (5, 3) and (7, 7), and a used buffer interrupt pending.
fn started_fake() -> Fixture {
    let mut f = Fixture::new();
    start_device(
        &mut f.transport,
        VERSION_1 | EVENT_IDX,
        &[(16, 0x1_0000), (8, 0x2_0000)],
    );
    {
        let mut dev = f.device.lock().unwrap();
        dev.queues[0].set_next_avail(5);
        dev.queues[0].set_next_used(3);
        dev.queues[1].set_next_avail(7);
        dev.queues[1].set_next_used(7);
    }
    f.transport.interrupt().signal_used_queue().unwrap();
    f
}

/// What `restore` must leave behind when it fails: the transport as created.
fn assert_fresh(g: &mut Fixture, name: &str) {
    assert_eq!(
        g.transport.state(),
        Fixture::new().transport.state(),
        "{name}"
    );
    assert_eq!(g.read(regs::STATUS), 0, "{name}");
    assert!(!g.calls().active, "{name}");
    assert_eq!([g.notified(0), g.notified(1)], [0, 0], "{name}");
    let irq = g.transport.interrupt().irqfd().read();
    assert_eq!(
        irq.map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock),
        "{name}"
    );
}

#[test]
fn a_device_not_started_gets_its_registers_back() {
    let mut f = Fixture::new();
    f.negotiate(VERSION_1 | (1 << 3));
    f.setup_queue(0, 16, 0x1_0000);
    f.write(regs::QUEUE_SEL, 1);
    f.write(regs::QUEUE_NUM, 4);
    f.write(regs::DEVICE_FEATURES_SEL, 1);
    let state = f.transport.state();
    assert_eq!(state.status, ACK | DRIVER | FEATURES_OK);
    assert!(state.queues.iter().all(|q| q.rings.is_none()));

    let mut g = Fixture::new();
    g.transport.restore(&state).unwrap();
    assert_eq!(g.transport.state(), state);
    assert!(!g.calls().active);
    assert!(g.calls().calls.activations.is_empty());
    assert_eq!([g.notified(0), g.notified(1)], [0, 0], "nothing to process");
    for q in [1, 0] {
        f.write(regs::QUEUE_SEL, q);
        g.write(regs::QUEUE_SEL, q);
        assert_eq!(readable(&mut g), readable(&mut f), "queue {q} selected");
    }

    // The driver goes on where it was: the device starts with what it had programmed.
    for t in [&mut f, &mut g] {
        t.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    }
    assert!(g.calls().active);
    assert_eq!(
        g.calls().calls.activations,
        f.calls().calls.activations,
        "the same queues and features"
    );
}

#[test]
fn a_started_device_starts_again_at_its_ring_positions() {
    let mut f = started_fake();
    let state = f.transport.state();
    assert_eq!(state.interrupt_status, VIRTIO_MMIO_INT_VRING);
    let rings: Vec<_> = state.queues.iter().map(|q| q.rings).collect();
    assert_eq!(
        rings,
        [
            Some(RingIndices {
                next_avail: 5,
                next_used: 3
            }),
            Some(RingIndices {
                next_avail: 7,
                next_used: 7
            }),
        ]
    );
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioState = serde_json::from_str(&json).unwrap();
    assert_eq!(state, f.transport.state());

    let mut g = Fixture::new();
    g.transport.restore(&state).unwrap();
    assert_eq!(g.transport.state(), state);
    assert_eq!(readable(&mut g), readable(&mut f));
    {
        let dev = g.calls();
        assert!(dev.active);
        assert_eq!(dev.calls.activations, f.calls().calls.activations);
        assert_eq!(dev.calls.activations[0].0, VERSION_1 | EVENT_IDX);
        assert!(dev.calls.activations[0].1.iter().all(|q| q.5), "EVENT_IDX");
        let positions: Vec<_> = dev
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        assert_eq!(positions, [(5, 3), (7, 7)]);
    }
    // Each queue is notified once, and the pending interrupt is delivered again.
    assert_eq!([g.notified(0), g.notified(1)], [1, 1]);
    assert_eq!(g.transport.interrupt().irqfd().read().unwrap(), 1);
    assert_eq!(g.read(regs::INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);

    // Only a fresh transport takes a state.
    for t in [&mut f, &mut g] {
        let err = t.transport.restore(&state).unwrap_err();
        assert!(matches!(err, MmioRestoreError::InUse { .. }), "{err}");
    }
}

#[test]
fn a_device_that_refused_to_start_stays_stopped() {
    let mut f = Fixture::new();
    f.device.lock().unwrap().refuse = true;
    f.negotiate(VERSION_1);
    f.setup_queue(0, 16, 0x1_0000);
    f.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_needs_reset(&mut f);
    let state = f.transport.state();

    let mut g = Fixture::new();
    g.transport.restore(&state).unwrap();
    assert_eq!(g.transport.state(), state);
    assert!(g.calls().calls.activations.is_empty());
    assert_needs_reset(&mut g);
    // The driver resets the device and starts it.
    g.write(regs::STATUS, 0);
    g.negotiate(VERSION_1);
    g.setup_queue(0, 16, 0x1_0000);
    g.write(regs::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(g.calls().active);
}

#[test]
fn bad_states_are_refused_and_leave_the_transport_as_created() {
    type Change = fn(&mut MmioState);
    type Expected = fn(&MmioRestoreError) -> bool;
    let cases: [(&str, Change, Expected); 17] = [
        (
            "device type",
            |s| s.device_type = 2,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::DeviceType {
                        snapshot: 2,
                        here: 26
                    }
                )
            },
        ),
        (
            "device features",
            |s| s.device_features ^= 1 << 3,
            |e| matches!(e, MmioRestoreError::DeviceFeatures { .. }),
        ),
        (
            "fewer queues",
            |s| s.queues.truncate(1),
            |e| {
                matches!(
                    e,
                    MmioRestoreError::QueueCount {
                        snapshot: 1,
                        here: 2
                    }
                )
            },
        ),
        (
            "more queues",
            |s| s.queues.push(s.queues[1].clone()),
            |e| {
                matches!(
                    e,
                    MmioRestoreError::QueueCount {
                        snapshot: 3,
                        here: 2
                    }
                )
            },
        ),
        (
            "maximum size",
            |s| s.queues[1].max_size = 16,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::QueueMaxSize {
                        index: 1,
                        snapshot: 16,
                        here: 8
                    }
                )
            },
        ),
        (
            "descriptor table outside memory",
            |s| s.queues[0].desc_table = MEM_SIZE as u64,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::Activate(ActivateError::QueueNotInMemory { index: 0 })
                )
            },
        ),
        (
            "used ring above 4 GiB",
            |s| s.queues[1].used_ring |= 1 << 32,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::Activate(ActivateError::QueueNotInMemory { index: 1 })
                )
            },
        ),
        (
            "size not a power of two",
            |s| s.queues[0].size = 3,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::Activate(ActivateError::QueueConfig { index: 0, .. })
                )
            },
        ),
        (
            "size above the maximum",
            |s| s.queues[1].size = 16,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::Activate(ActivateError::QueueConfig { index: 1, .. })
                )
            },
        ),
        (
            "misaligned used ring",
            |s| s.queues[0].used_ring += 2,
            |e| {
                matches!(
                    e,
                    MmioRestoreError::Activate(ActivateError::QueueConfig { index: 0, .. })
                )
            },
        ),
        (
            "ring positions missing",
            |s| s.queues[1].rings = None,
            |e| matches!(e, MmioRestoreError::MissingRings { index: 1 }),
        ),
        (
            "ring positions of a device not started",
            |s| s.status = ACK | DRIVER | FEATURES_OK,
            |e| matches!(e, MmioRestoreError::UnexpectedRings { index: 0 }),
        ),
        (
            "unknown status bit",
            |s| s.status |= 0x100,
            |e| matches!(e, MmioRestoreError::Status(_)),
        ),
        (
            "status out of order",
            |s| s.status = ACK | DRIVER_OK,
            |e| matches!(e, MmioRestoreError::Status(_)),
        ),
        (
            "NEEDS_RESET without DRIVER_OK",
            |s| s.status = ACK | DRIVER | FEATURES_OK | NEEDS_RESET,
            |e| matches!(e, MmioRestoreError::Status(_)),
        ),
        (
            "features without VERSION_1",
            |s| s.driver_features = EVENT_IDX,
            |e| matches!(e, MmioRestoreError::DriverFeatures(_)),
        ),
        (
            "unknown interrupt status bit",
            |s| s.interrupt_status = 4,
            |e| matches!(e, MmioRestoreError::InterruptStatus(4)),
        ),
    ];
    let good = started_fake().transport.state();
    for (name, change, expected) in cases {
        let mut state = good.clone();
        change(&mut state);
        let mut g = Fixture::new();
        let err = g.transport.restore(&state).unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        assert!(g.calls().calls.activations.is_empty(), "{name}");
        assert_fresh(&mut g, name);
    }

    // Features the device does not offer, accepted in the snapshot.
    let mut state = good.clone();
    state.driver_features |= 1 << 50;
    let err = Fixture::new().transport.restore(&state).unwrap_err();
    assert!(
        matches!(err, MmioRestoreError::DriverFeatures(_)),
        "{err:?}"
    );
    let err = MmioRestoreError::DeviceType {
        snapshot: 2,
        here: 1,
    };
    assert_eq!(err.to_string(), "device type 2 in the snapshot, 1 here");

    // A device that refuses to start: an error, not NEEDS_RESET; the device is reset.
    let mut g = Fixture::new();
    g.device.lock().unwrap().refuse = true;
    let err = g.transport.restore(&good).unwrap_err();
    assert!(
        matches!(
            err,
            MmioRestoreError::Activate(ActivateError::QueueNotReady { .. })
        ),
        "{err:?}"
    );
    assert_eq!(g.calls().calls.activations.len(), 1);
    assert_fresh(&mut g, "device refuses");

    // The same transport takes the good state afterwards.
    g.device.lock().unwrap().refuse = false;
    g.transport.restore(&good).unwrap();
    assert_eq!(g.transport.state(), good);
}

/// A read of `sector` into the request's own buffers (header, 512 bytes of data, status at
/// `slot`-dependent addresses); returns the head and the data address.
fn post_read(q: &mut GuestQueue, mem: &GuestMemoryMmap, slot: u64, sector: u64) -> (u16, u64) {
    let (hdr, data, status) = (0x4_0000 + 16 * slot, 0x5_0000 + 512 * slot, 0x6_0000 + slot);
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(hdr)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    (q.add_chain(&[r(hdr, 16), w(data, 512), w(status, 1)]), data)
}

/// The request at `slot` read `sector` of `image` and completed.
fn assert_read(mem: &GuestMemoryMmap, image: &[u8], slot: u64, sector: u64) {
    let status: u8 = mem.read_obj(GuestAddress(0x6_0000 + slot)).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK as u8, "request {slot}");
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(0x5_0000 + 512 * slot))
        .unwrap();
    let start = 512 * sector as usize;
    assert_eq!(got, image[start..start + 512], "request {slot}");
}

/// A block device on `path` behind a transport on `mem`, with its event loop.
fn block_transport(
    mem: &GuestMemoryMmap,
    path: &std::path::Path,
) -> (
    MmioTransport,
    Arc<EventFdInterrupt>,
    EventManager<Arc<Mutex<QueueHandler>>>,
) {
    let block = Block::new(std::fs::File::open(path).unwrap(), true, None).unwrap();
    let irq = Arc::new(EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(block)), irq.clone()).unwrap();
    let mut event_loop = EventManager::new().unwrap();
    event_loop.add_subscriber(Arc::new(Mutex::new(t.queue_handler().unwrap())));
    (t, irq, event_loop)
}

#[test]
fn a_block_device_goes_on_after_a_restore() {
    let tmp = TempFile::new().unwrap();
    let image: Vec<u8> = (0..16 * 512u32)
        .map(|i| (i / 512 * 37 + i % 251) as u8)
        .collect();
    std::fs::write(tmp.as_path(), &image).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (mut t, irq, mut event_loop) = block_transport(&mem, tmp.as_path());
    let features = t.device().lock().unwrap().avail_features();
    assert_ne!(features & EVENT_IDX, 0);
    start_device(&mut t, features, &[(256, 0x1_0000)]);

    // Two requests run to completion; a third is made available but not processed yet.
    let mut q = GuestQueue::new(&mem, GuestAddress(0x1_0000), 256);
    q.set_used_event(0);
    for (slot, sector) in [(0, 1), (1, 2)] {
        let (head, _) = post_read(&mut q, &mem, slot, sector);
        write32(&mut t, regs::QUEUE_NOTIFY, 0);
        assert_eq!(event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(), 1);
        assert_eq!(q.take_used(), [(u32::from(head), 513)]);
        assert_read(&mem, &image, slot, sector);
    }
    let (third, _) = post_read(&mut q, &mem, 2, 3);
    let state = t.state();
    assert_eq!(
        state.queues[0].rings,
        Some(RingIndices {
            next_avail: 2,
            next_used: 2
        })
    );
    assert_eq!(
        state.interrupt_status, VIRTIO_MMIO_INT_VRING,
        "not acknowledged"
    );
    assert_eq!(irq.irqfd().read().unwrap(), 1);
    let state: MmioState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

    // A new VMM: a new device and transport on the same guest memory.
    let (mut t, irq, mut event_loop) = block_transport(&mem, tmp.as_path());
    t.restore(&state).unwrap();
    assert!(t.device().lock().unwrap().is_activated());
    assert_eq!(
        read32(&mut t, regs::STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert_eq!(
        irq.irqfd().read().unwrap(),
        1,
        "the pending interrupt again"
    );
    assert_eq!(
        read32(&mut t, regs::INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    write32(&mut t, regs::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);

    // The restore's notification runs the request the old VMM had not processed; the two
    // it had are not run again.
    q.set_used_event(2);
    assert_eq!(event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(), 1);
    assert_eq!(q.take_used(), [(u32::from(third), 513)]);
    assert_read(&mem, &image, 2, 3);
    assert_eq!(irq.irqfd().read().unwrap(), 1);

    // And the guest goes on.
    q.set_used_event(3);
    let (fourth, _) = post_read(&mut q, &mem, 3, 9);
    write32(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(), 1);
    assert_eq!(q.take_used(), [(u32::from(fourth), 513)]);
    assert_read(&mem, &image, 3, 9);
    let used_idx: u16 = mem
        .read_obj(GuestAddress(used_ring(0x1_0000, 256) + 2))
        .unwrap();
    assert_eq!(used_idx, 4);
    assert_eq!(
        t.state().queues[0].rings,
        Some(RingIndices {
            next_avail: 4,
            next_used: 4
        })
    );
}

#[test]
fn a_restored_net_device_sets_the_tap_offloads() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let transport = |mock: &Mock| {
        let net = Net::new(mock.clone(), [0x52, 0x54, 0, 0, 0, 1]);
        let irq = Arc::new(EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        MmioTransport::new(mem.clone(), Arc::new(Mutex::new(net)), irq).unwrap()
    };
    let offloads = tap_offload_flags(AVAIL_FEATURES);
    assert_ne!(offloads, 0);
    let mock = Mock::new();
    let mut t = transport(&mock);
    start_device(&mut t, AVAIL_FEATURES, &[(256, 0x1_0000), (256, 0x2_0000)]);
    assert_eq!(mock.state().offloads, [offloads]);
    let state = t.state();

    let mock = Mock::new();
    transport(&mock).restore(&state).unwrap();
    assert_eq!(mock.state().offloads, [offloads], "as on DRIVER_OK");

    // A backend that refuses them: the restore fails.
    let mock = Mock::new();
    mock.state().offload_error = true;
    let mut t = transport(&mock);
    let err = t.restore(&state).unwrap_err();
    assert!(
        matches!(err, MmioRestoreError::Activate(ActivateError::Backend(_))),
        "{err:?}"
    );
    assert!(!t.device().lock().unwrap().is_activated());
    assert_eq!(read32(&mut t, regs::STATUS), 0);
}
