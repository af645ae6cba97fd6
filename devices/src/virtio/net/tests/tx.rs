//! Transmit: guest chains to the backend.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;

use super::*;

#[test]
fn transmit_passes_header_and_frame_through() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let f = frame(1500, 1);
    h.fill(A, &f[..12]);
    h.fill(B, &f[12..]);
    assert_eq!(h.send(&[r(A, 12), r(B, 1500)]), 0);
    assert_eq!(mock.state().tx, [f]);
    let stats = h.stats();
    assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 1500));
    assert_eq!((stats.tx_dropped, stats.tx_errors), (0, 0));
    assert_eq!((h.irq.used(), stats.notifications), (1, 1));
    assert!(
        !h.net.process_queue(TX_QUEUE).notified,
        "nothing new: no notification"
    );
    assert!(!h.net.process_queue(2).notified, "no such queue");
    assert_eq!(h.irq.used(), 1);
}

#[test]
fn transmit_gathers_frames_from_many_descriptors() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    // Header split over two descriptors, the frame over three, one of them straddling
    // the boundary between the two memory regions.
    let f = frame(3000, 2);
    let straddle = REGION - 700;
    h.fill(A, &f[..5]);
    h.fill(A + 0x100, &f[5..12]);
    h.fill(B, &f[12..1012]);
    h.fill(straddle, &f[1012..2512]);
    h.fill(C, &f[2512..]);
    let bufs = [
        r(A, 5),
        r(A + 0x100, 7),
        r(B, 1000),
        r(straddle, 1500),
        r(C, 500),
    ];
    assert_eq!(h.send(&bufs), 0);
    // Header and frame in one descriptor, with an empty descriptor after it.
    let g = frame(64, 3);
    h.fill(C, &g);
    h.send(&[r(C, g.len() as u32), r(A, 0)]);
    assert_eq!(mock.state().tx, [f, g]);
    assert_eq!(h.stats().tx_frames, 2);
    assert_eq!(h.stats().tx_bytes, 3064);
}

#[test]
fn transmit_takes_frames_up_to_the_limit() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let f = frame(MAX_FRAME_LEN, 4);
    h.fill(BIG, &f);
    h.send(&[r(BIG, MAX_BUFFER_LEN as u32)]);
    assert_eq!(mock.state().tx.len(), 1);
    assert!(mock.state().tx[0] == f);
    // One byte more, in one descriptor or in two: dropped.
    h.send(&[r(BIG, MAX_BUFFER_LEN as u32 + 1)]);
    h.send(&[r(BIG, MAX_BUFFER_LEN as u32), r(A, 1)]);
    assert_eq!(mock.state().tx.len(), 1);
    assert_eq!(h.stats().tx_dropped, 2);
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    h.fill(A, &frame(2000, 5));
    let cases: [&[Buf]; 12] = [
        // Shorter than the header, or than header and Ethernet header.
        &[r(A, 11)],
        &[r(A, 12)],
        &[r(A, 12), r(B, 13)],
        &[r(A, 0)],
        // A device-writable descriptor, first or later.
        &[w(A, 12), r(B, 100)],
        &[r(A, 12), w(B, 100)],
        // Outside guest memory, in part or in whole, or wrapping around.
        &[r(A, 12), r(MEM_END - 50, 100)],
        &[r(MEM_END, 112)],
        &[r(u64::MAX - 10, 112)],
        // Far too long, in one descriptor or summed.
        &[r(A, u32::MAX)],
        &[r(A, 0x8000_0000), r(B, 0x8000_0000)],
        &[r(A, 12), r(B, MAX_FRAME_LEN as u32 + 1)],
    ];
    for (i, bufs) in cases.iter().enumerate() {
        assert_eq!(h.send(bufs), 0, "{bufs:?}");
        assert_eq!(h.stats().tx_dropped, i as u64 + 1, "{bufs:?}");
    }
    // A loop: 200 -> 201 -> 200 ...
    let next = VRING_DESC_F_NEXT as u16;
    h.txq.store(200, A, 12, next, 201);
    h.txq.store(201, B, 100, next, 200);
    h.txq.publish(200);
    h.net.process_queue(TX_QUEUE);
    assert_eq!(h.txq.take_used(), [(200, 0)]);
    assert_eq!(h.stats().tx_dropped, cases.len() as u64 + 1);
    assert!(mock.state().tx.is_empty());
    assert_eq!((h.stats().tx_frames, h.stats().tx_errors), (0, 0));
    h.assert_still_works(&mock);
}

#[test]
fn backend_write_errors_are_counted() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let f = frame(200, 6);
    h.fill(A, &f);
    mock.state().tx_error = Some(libc::EIO);
    for _ in 0..3 {
        assert_eq!(h.send(&[r(A, f.len() as u32)]), 0);
    }
    assert_eq!((h.stats().tx_errors, h.stats().tx_frames), (3, 0));
    mock.state().tx_error = None;
    h.assert_still_works(&mock);
}

#[test]
fn one_notification_per_transmit_batch() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    h.fill(A, &frame(100, 7));
    for _ in 0..3 {
        h.txq.add_chain(&[r(A, 112)]);
    }
    assert!(h.net.process_queue(TX_QUEUE).notified);
    assert_eq!(h.txq.take_used(), [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(mock.state().tx.len(), 3);
    assert_eq!(h.irq.used(), 1);
    assert_eq!(h.txq.used_flags(), 0, "notifications are enabled again");
}

#[test]
fn event_idx_suppresses_transmit_notifications() {
    let mem = memory();
    let (mut h, _mock) = Harness::with(&mem, u64::MAX);
    h.fill(A, &frame(100, 8));
    h.txq.set_used_event(1);
    h.txq.add_chain(&[r(A, 112)]);
    assert!(
        !h.net.process_queue(TX_QUEUE).notified,
        "used_event not passed"
    );
    h.txq.add_chain(&[r(A, 112)]);
    assert!(
        h.net.process_queue(TX_QUEUE).notified,
        "used index went from 1 to 2"
    );
    assert_eq!(h.irq.used(), 1);
    assert_eq!(h.txq.avail_event(), 2);
}
