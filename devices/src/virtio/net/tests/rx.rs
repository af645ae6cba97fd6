//! Receive: backend frames into the guest's buffers.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::*;

#[test]
fn mergeable_receive_spreads_a_frame_over_small_buffers() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let chains: [&[Buf]; 5] = [
        &[w(A, 512)],
        &[w(A + 0x1000, 200), w(A + 0x2000, 312)],
        &[w(REGION - 256, 512)],
        &[w(B, 512)],
        &[w(C, 512)],
    ];
    let mut heads = Vec::new();
    for bufs in chains {
        h.clear(bufs);
        heads.push(h.post(bufs));
    }
    let f = frame(1400, 9);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    let used = h.rxq.take_used();
    assert_eq!(used, [(heads[0], 512), (heads[1], 512), (heads[2], 388)]);
    let mut got = Vec::new();
    for (bufs, &(_, len)) in chains.iter().zip(&used) {
        got.extend(h.received(bufs, len));
    }
    assert_eq!(got, as_received(&f, 3, true));
    assert_eq!(
        h.guest(REGION - 256 + 388, 1),
        [0xee],
        "nothing past the frame"
    );
    let stats = h.stats();
    assert_eq!((stats.rx_frames, stats.rx_bytes), (1, 1400));
    assert_eq!((stats.rx_dropped, stats.rx_bad_chains), (0, 0));
    assert_eq!(h.irq.used(), 1);
    assert!(h.net.backend_wanted(0));

    // Two small frames: one buffer each, the next ones in the ring.
    let (g, k) = (frame(100, 10), frame(50, 11));
    mock.state().rx.extend([g.clone(), k.clone()]);
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(heads[3], 112), (heads[4], 62)]);
    assert_eq!(h.received(chains[3], 112), as_received(&g, 1, true));
    assert_eq!(h.received(chains[4], 62), as_received(&k, 1, true));
    assert_eq!(h.irq.used(), 2, "one notification per batch");
    // The device always offered room for the largest frame.
    assert!(mock
        .state()
        .read_capacities
        .iter()
        .all(|&c| c >= MAX_BUFFER_LEN));
    // Out of buffers now, with nothing pending: it waits for the guest.
    assert!(!h.net.backend_wanted(0));
    assert_eq!(mock.state().read_capacities.len(), 3);
}

#[test]
fn receive_without_mergeable_buffers_into_one_big_buffer() {
    let mem = memory();
    let (mut h, mock) = Harness::with(&mem, NO_MRG);
    // Linux posts "big packets" like this: a header descriptor and page-sized pieces.
    let bufs = [w(A, 12), w(BIG, MAX_FRAME_LEN as u32 - 1000), w(B, 1000)];
    h.clear(&bufs);
    let head = h.post(&bufs);
    let f = frame(60_000, 12);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(head, f.len() as u32)]);
    assert!(h.received(&bufs, f.len() as u32) == as_received(&f, 1, true));
    // Read straight into the guest's buffer: the backend got exactly its room.
    assert_eq!(mock.state().read_capacities, [MAX_BUFFER_LEN]);
    assert_eq!(h.stats().rx_frames, 1);
    assert_eq!(h.stats().rx_bytes, 60_000);
}

#[test]
fn receive_without_mergeable_buffers_drops_frames_that_do_not_fit() {
    let mem = memory();
    let (mut h, mock) = Harness::with(&mem, NO_MRG);
    let bufs = [w(A, 1526)];
    let first = h.post(&bufs);
    let second = h.post(&bufs);
    let (fits, too_big, small) = (frame(1500, 13), frame(1515, 14), frame(60, 15));
    mock.state().rx.extend([fits.clone(), too_big]);
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(first, 1512)]);
    assert_eq!(h.received(&bufs, 1512), as_received(&fits, 1, true));
    // The frame that did not fit is dropped; its buffer takes the next frame.
    assert_eq!(h.stats().rx_dropped, 1);
    mock.state().rx.push_back(small.clone());
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(second, 72)]);
    assert_eq!(h.received(&bufs, 72), as_received(&small, 1, true));
    let stats = h.stats();
    assert_eq!((stats.rx_frames, stats.rx_dropped), (2, 1));
}

#[test]
fn receive_header_follows_the_negotiated_features() {
    let mem = memory();
    // Only VERSION_1: no GUEST_CSUM, so `flags` must be 0; no MRG_RXBUF, so
    // `num_buffers` is 1; the header is still 12 bytes.
    let (mut h, mock) = Harness::with(&mem, feature_bit(VIRTIO_F_VERSION_1));
    assert_eq!(mock.state().offloads, [0]);
    let bufs = [w(A, 1526)];
    let head = h.post(&bufs);
    let f = frame(300, 16);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(head, 312)]);
    let got = h.received(&bufs, 312);
    assert_eq!(got, as_received(&f, 1, false));
    assert_eq!(got[0], 0);

    // The same through the direct path (a buffer for the largest frame).
    let bufs = [w(BIG, MAX_BUFFER_LEN as u32)];
    h.clear(&bufs);
    let head = h.post(&bufs);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(head, 312)]);
    assert_eq!(h.received(&bufs, 312), as_received(&f, 1, false));
}

#[test]
fn without_buffers_frames_stay_in_the_backend() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(100 + i, i as u8)).collect();
    mock.state().rx.extend(frames.iter().cloned());
    assert!(h.net.backend_wanted(0));
    h.net.process_backend(0);
    // Nothing read, nothing dropped; backend input is not wanted; the guest is asked to
    // notify the receive queue.
    assert!(!h.net.backend_wanted(0));
    assert_eq!(mock.state().rx.len(), 5);
    assert!(mock.state().read_capacities.is_empty());
    assert_eq!(h.rxq.used_flags(), 0);
    assert_eq!(h.irq.used(), 0);

    // Two buffers: two frames, and it waits again.
    let bufs = [w(A, 2048)];
    let heads = [h.post(&bufs), h.post(&[w(B, 2048)])];
    assert!(h.net.process_queue(RX_QUEUE).notified);
    assert_eq!(h.rxq.take_used(), [(heads[0], 112), (heads[1], 113)]);
    assert_eq!(mock.state().rx.len(), 3);
    assert!(!h.net.backend_wanted(0));
    assert_eq!(h.stats().rx_dropped, 0);
}

#[test]
fn a_frame_waiting_for_buffers_is_kept_and_delivered_later() {
    let mem = memory();
    // EVENT_IDX on: the device must ask for a notification past the buffers it holds.
    let (mut h, mock) = Harness::with(&mem, u64::MAX);
    let chains: [&[Buf]; 3] = [&[w(A, 512)], &[w(B, 512)], &[w(C, 1024)]];
    let first = h.post(chains[0]);
    let f = frame(1400, 17);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    // Read (it might have fitted), held, not dropped, not delivered.
    assert!(mock.state().rx.is_empty());
    assert_eq!(h.rxq.take_used(), []);
    assert!(!h.net.backend_wanted(0));
    assert_eq!(
        h.rxq.avail_event(),
        1,
        "notify once a buffer past the first comes"
    );
    let stats = h.stats();
    assert_eq!((stats.rx_frames, stats.rx_dropped), (0, 0));

    // One more buffer is not enough: still waiting, asking for the next one.
    let second = h.post(chains[1]);
    h.net.process_queue(RX_QUEUE);
    assert_eq!(h.rxq.take_used(), []);
    assert!(!h.net.backend_wanted(0));
    assert_eq!(h.rxq.avail_event(), 2);

    // A third: delivered over all three, and backend input is wanted again.
    let third = h.post(chains[2]);
    mock.state().rx.push_back(frame(40, 18));
    assert!(h.net.process_queue(RX_QUEUE).notified);
    assert_eq!(
        h.rxq.take_used(),
        [(first, 512), (second, 512), (third, 388)]
    );
    let mut got = Vec::new();
    for (bufs, len) in chains.iter().zip([512, 512, 388]) {
        got.extend(h.received(bufs, len));
    }
    assert_eq!(got, as_received(&f, 3, true));
    // The queue notification also read on: the next frame waits in the backend, as
    // there are no buffers left.
    assert_eq!(mock.state().rx.len(), 1);
    assert!(!h.net.backend_wanted(0));
    // Once it has delivered that one into the first of two new buffers, it has room left
    // and wants backend input again.
    h.post(&[w(A, 512)]);
    h.post(&[w(B, 512)]);
    h.net.process_queue(RX_QUEUE);
    assert_eq!(h.rxq.take_used().len(), 1);
    assert!(h.net.backend_wanted(0));
    assert_eq!(h.stats().rx_frames, 2);
}

#[test]
fn hostile_receive_chains_are_returned_and_counted() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let cases: [&[Buf]; 8] = [
        // Device-readable, in whole or in part.
        &[r(A, 2048)],
        &[w(A, 100), r(B, 2048)],
        // Too short for the header.
        &[w(A, 11)],
        &[w(A, 0)],
        &[w(A, 5), w(B, 6)],
        // Outside guest memory.
        &[w(MEM_END, 2048)],
        &[w(MEM_END - 100, 200)],
        &[w(A, 100), w(u64::MAX - 10, 100)],
    ];
    let good = [w(C, 2048)];
    for (i, bufs) in cases.iter().enumerate() {
        h.fill(A, &[0x77; 16]);
        let bad = h.post(bufs);
        let head = h.post(&good);
        let f = frame(200, i as u8);
        mock.state().rx.push_back(f.clone());
        h.net.process_backend(0);
        assert_eq!(h.rxq.take_used(), [(bad, 0), (head, 212)], "{bufs:?}");
        assert_eq!(h.received(&good, 212), as_received(&f, 1, true));
        assert_eq!(h.guest(A, 16), [0x77; 16], "{bufs:?}: nothing written");
        assert_eq!(h.stats().rx_bad_chains, i as u64 + 1);
    }
    // A loop, then a descriptor index past the table.
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    h.rxq.store(200, A, 100, next | write, 201);
    h.rxq.store(201, B, 100, next | write, 200);
    h.rxq.store(210, A, 100, next | write, 999);
    h.rxq.publish(200);
    h.rxq.publish(210);
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(200, 0), (210, 0)]);
    assert_eq!(h.stats().rx_bad_chains, cases.len() as u64 + 2);
    assert_eq!(h.stats().rx_frames, cases.len() as u64);
    assert_eq!(h.stats().rx_dropped, 0);
    h.assert_still_works(&mock);
}

#[test]
fn hostile_chains_in_the_middle_of_a_mergeable_frame() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let a = h.post(&[w(A, 512)]);
    let bad = h.post(&[r(B, 512)]);
    let c = h.post(&[w(C, 1024)]);
    let f = frame(1000, 19);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    // The frame's buffers stay together in the used ring; the bad one comes before.
    assert_eq!(h.rxq.take_used(), [(bad, 0), (a, 512), (c, 500)]);
    let mut got = h.guest(A, 512);
    got.extend(h.guest(C, 500));
    assert_eq!(got, as_received(&f, 2, true));
}

#[test]
fn bogus_receive_ring_index_does_not_hang_the_device() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    mock.state().rx.push_back(frame(100, 20));
    let good = h.rxq.avail_idx();
    h.rxq.set_avail_idx(good.wrapping_add(QUEUE_SIZE + 10));
    h.net.process_backend(0);
    assert!(!h.net.backend_wanted(0));
    assert!(!h.net.process_queue(RX_QUEUE).notified);
    assert_eq!(h.rxq.take_used(), []);
    h.rxq.set_avail_idx(good);
    mock.state().rx.clear();
    h.assert_still_works(&mock);
}

#[test]
fn short_frames_and_read_errors_from_the_backend() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    let bufs = [w(A, 2048)];
    let head = h.post(&bufs);
    h.post(&[w(B, 2048)]);
    let f = frame(80, 21);
    {
        let mut state = mock.state();
        // An error, then frames shorter than header and Ethernet header.
        state.rx.extend([vec![0; 25], vec![0; 12], f.clone()]);
        state.rx_error = Some(libc::EFAULT);
    }
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), [(head, 92)]);
    assert_eq!(h.received(&bufs, 92), as_received(&f, 1, true));
    let stats = h.stats();
    assert_eq!(
        (stats.rx_errors, stats.rx_dropped, stats.rx_frames),
        (1, 2, 1)
    );
    assert!(h.net.backend_wanted(0));
}

#[test]
fn a_backend_that_keeps_failing_or_ends_is_no_longer_polled() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    h.post(&[w(A, 2048)]);
    for _ in 0..MAX_BACKEND_ERRORS {
        mock.state().rx_error = Some(libc::EIO);
        assert!(h.net.backend_wanted(0));
        h.net.process_backend(0);
    }
    assert!(!h.net.backend_wanted(0));
    assert_eq!(h.stats().rx_errors, u64::from(MAX_BACKEND_ERRORS));
    // A new driver gets a new try.
    h.net.reset();
    h.activate(NO_EVENT_IDX);
    assert!(h.net.backend_wanted(0));

    h.post(&[w(A, 2048)]);
    mock.state().eof = true;
    h.net.process_backend(0);
    assert!(!h.net.backend_wanted(0));
    h.net.process_queue(RX_QUEUE);
    assert!(!h.net.backend_wanted(0));
}

#[test]
fn reset_drops_a_waiting_frame() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    h.post(&[w(A, 512)]);
    mock.state().rx.push_back(frame(1000, 22));
    h.net.process_backend(0);
    assert!(!h.net.backend_wanted(0));
    h.net.reset();
    assert_eq!(h.stats().rx_dropped, 1);
    assert!(!h.net.backend_wanted(0));
    h.net.process_backend(0);
    assert!(!h.net.process_queue(RX_QUEUE).notified);
}

#[test]
fn queue_states_count_chains_held_for_a_waiting_frame_as_not_taken() {
    let mem = memory();
    assert!(Net::new(Mock::new(), [2, 0, 0, 0, 0, 1])
        .queue_states()
        .is_empty());
    let (mut h, mock) = Harness::new(&mem);
    let positions = |h: &Harness| -> Vec<(u16, u16)> {
        let states = h.net.queue_states();
        states.iter().map(|q| (q.next_avail, q.next_used)).collect()
    };
    assert_eq!(positions(&h), [(0, 0), (0, 0)]);
    let f = frame(1400, 9);
    h.fill(C, &f);
    h.send(&[r(C, f.len() as u32)]);
    assert_eq!(positions(&h), [(0, 0), (1, 1)]);

    // The frame waits with the first chain held: a snapshot leaves both out.
    let first = h.post(&[w(A, 512)]);
    mock.state().rx.push_back(f.clone());
    h.net.process_backend(0);
    assert_eq!(h.rxq.take_used(), []);
    assert!(!h.net.backend_wanted(0));
    assert_eq!(positions(&h), [(0, 0), (1, 1)]);
    let states = h.net.queue_states();
    assert_eq!((states[0].desc_table, states[0].size), (RXQ, QUEUE_SIZE));

    // A malformed chain comes between the held ones and goes back: they stay taken.
    let bad = h.post(&[r(B, 512)]);
    let second = h.post(&[w(B + 0x1000, 512)]);
    h.net.process_queue(RX_QUEUE);
    assert_eq!(h.rxq.take_used(), [(bad, 0)]);
    assert_eq!(positions(&h)[0], (3, 1));

    // Delivered: the positions are the queue's own again.
    let third = h.post(&[w(C + 0x1000, 1024)]);
    h.net.process_queue(RX_QUEUE);
    assert_eq!(
        h.rxq.take_used(),
        [(first, 512), (second, 512), (third, 388)]
    );
    assert_eq!(positions(&h), [(4, 4), (1, 1)]);
}
