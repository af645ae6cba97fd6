//! virtio-rng through a mock virtqueue: requests good and hostile, the per-request bound, the
//! rate bound with its timer, and reset.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::test_utils::{r, w, CountingInterrupt, GuestQueue};

const MEM_END: u64 = 0x40_0000;
const A: u64 = 0x1_0000;
const B: u64 = 0x2_0000;
/// Room for many 64 KiB buffers, one after another.
const BIG: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    q: GuestQueue<'a>,
    rng: Rng,
    irq: Arc<CountingInterrupt>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let q = GuestQueue::new(mem, GuestAddress(0), QUEUE_SIZE);
        let irq = Arc::new(CountingInterrupt::default());
        let mut rng = Rng::new().unwrap();
        rng.activate(
            mem.clone(),
            vec![q.queue()],
            feature_bit(VIRTIO_F_VERSION_1),
            irq.clone(),
        )
        .unwrap();
        Harness { mem, q, rng, irq }
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    fn mark(&self, addr: u64, len: usize) {
        self.mem
            .write_slice(&vec![0xa5; len], GuestAddress(addr))
            .unwrap();
    }
}

/// Whether `bytes` look random: not all one value, and no long run of a value.
fn looks_random(bytes: &[u8]) -> bool {
    bytes.len() >= 32 && bytes.windows(8).all(|w| w.iter().any(|&b| b != w[0]))
}

#[test]
fn the_device_is_an_entropy_device_with_one_queue_and_no_config() {
    let rng = Rng::new().unwrap();
    assert_eq!(rng.device_type(), 4);
    assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(rng.avail_features(), 1 << 32, "VIRTIO_F_VERSION_1 only");
    let mut config = [0xff; 8];
    rng.read_config(0, &mut config);
    assert_eq!(config, [0; 8]);
}

#[test]
fn a_buffer_is_filled_with_random_bytes_and_the_guest_notified() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.mark(A, 512);
    h.mark(B, 512);
    let first = h.q.add_chain(&[w(A, 512)]);
    let second = h.q.add_chain(&[w(B, 512)]);
    assert!(h.rng.process_queue(0).notified);
    assert_eq!(
        h.q.take_used(),
        vec![(u32::from(first), 512), (u32::from(second), 512)]
    );
    assert_eq!(h.irq.used(), 1, "one notification for the batch");
    let (a, b) = (h.bytes(A, 512), h.bytes(B, 512));
    assert!(looks_random(&a) && looks_random(&b));
    assert_ne!(a, b);
    assert_eq!(h.rng.stats().bytes, 1024);
}

#[test]
fn a_chain_of_several_buffers_is_filled_across_them() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.mark(A, 100);
    h.mark(B, 300);
    h.q.add_chain(&[w(A, 100), w(B, 300)]);
    h.rng.process_queue(0);
    assert_eq!(h.q.take_used()[0].1, 400);
    assert!(looks_random(&h.bytes(A, 100)) && looks_random(&h.bytes(B, 300)));
}

#[test]
fn a_large_buffer_gets_at_most_the_bound() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let len = 3 * MAX_REQUEST_BYTES;
    h.mark(BIG, len as usize);
    h.q.add_chain(&[w(BIG, len)]);
    h.rng.process_queue(0);
    assert_eq!(h.q.take_used()[0].1, MAX_REQUEST_BYTES);
    let end = BIG + u64::from(MAX_REQUEST_BYTES);
    assert!(
        h.bytes(end, 64).iter().all(|&b| b == 0xa5),
        "nothing past the bound"
    );
}

#[test]
fn hostile_chains_get_nothing_and_the_device_carries_on() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.mark(A, 64);
    // A device-readable buffer, alone and before a writable one.
    h.q.add_chain(&[r(A, 64)]);
    h.q.add_chain(&[w(B, 64), r(A, 64)]);
    // Outside guest memory, and straddling its end.
    h.q.add_chain(&[w(MEM_END + 0x1000, 64)]);
    h.q.add_chain(&[w(MEM_END - 16, 64)]);
    // Zero length, and a huge length outside memory.
    h.q.add_chain(&[w(A, 0)]);
    h.q.add_chain(&[w(0xffff_ffff_ffff_0000, u32::MAX)]);
    // A good one after all that.
    h.q.add_chain(&[w(B, 32)]);
    h.rng.process_queue(0);
    let used: Vec<u32> = h.q.take_used().iter().map(|&(_, len)| len).collect();
    assert_eq!(used, vec![0, 0, 0, 0, 0, 0, 32]);
    assert!(
        h.bytes(A, 64).iter().all(|&b| b == 0xa5),
        "readable buffer untouched"
    );
    assert_eq!(h.rng.stats().errors, 5);
}

#[test]
fn a_bogus_available_index_does_not_spin() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.q.set_avail_idx(QUEUE_SIZE * 3);
    assert!(!h.rng.process_queue(0).notified);
    assert!(h.q.take_used().is_empty());
}

#[test]
fn the_rate_is_bounded_and_the_timer_brings_the_device_back() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let started = Instant::now();
    // The burst is 16 buffers of 64 KiB; offer 20.
    let chains = 20;
    for i in 0..chains {
        h.q.add_chain(&[w(BIG + i * u64::from(MAX_REQUEST_BYTES), MAX_REQUEST_BYTES)]);
    }
    h.rng.process_queue(0);
    let mut given: u64 = h.q.take_used().iter().map(|&(_, len)| u64::from(len)).sum();
    let served_first = given;
    assert!(
        served_first >= BURST_BYTES,
        "the burst is served at once: {served_first}"
    );
    assert!(
        h.rng.backend_wanted(0),
        "dry: the device waits for its timer"
    );
    // A notification while dry changes nothing.
    assert!(!h.rng.process_queue(0).notified);
    assert!(h.q.take_used().is_empty());

    // Serve through the timer until every chain is back.
    let fd = h.rng.backend_fds()[0];
    let mut returned = (served_first / u64::from(MAX_REQUEST_BYTES)) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.rng.backend_wanted(0) {
        assert!(
            Instant::now() < deadline,
            "the timer never brought the device back"
        );
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert_eq!(ready, 1, "the refill timer is armed and fires");
        h.rng.process_backend(0);
        let used = h.q.take_used();
        returned += used.len();
        given += used.iter().map(|&(_, len)| u64::from(len)).sum::<u64>();
        if returned >= chains as usize {
            break;
        }
    }
    let elapsed = started.elapsed();
    let allowed = BURST_BYTES as f64 + RATE_BYTES_PER_SEC as f64 * elapsed.as_secs_f64();
    assert!(
        (given as f64) <= allowed,
        "{given} bytes in {elapsed:?}: more than the rate allows ({allowed})"
    );
    assert!(h.rng.stats().throttled >= 1);
}

#[test]
fn every_request_costs_at_least_the_minimum() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // No refill during the test: the bucket was last refilled in the future.
    h.rng.bucket.refilled_at = Instant::now() + Duration::from_secs(3600);
    let before = h.rng.bucket.bytes;
    for i in 0..32 {
        h.q.add_chain(&[w(A + i, 1)]);
    }
    h.rng.process_queue(0);
    let used = h.q.take_used();
    assert_eq!(used.len(), 32);
    assert!(used.iter().all(|&(_, len)| len == 1));
    assert_eq!(before - h.rng.bucket.bytes, 32 * MIN_REQUEST_COST);
}

#[test]
fn reset_stops_the_device_and_it_can_start_again() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.rng.bucket.bytes = 0;
    h.q.add_chain(&[w(A, 64)]);
    h.rng.process_queue(0);
    assert!(h.rng.backend_wanted(0));
    h.rng.reset();
    assert!(!h.rng.is_activated());
    assert!(!h.rng.backend_wanted(0));
    assert!(h.rng.queue_states().is_empty());
    assert!(!h.rng.process_queue(0).notified);
    h.rng.process_backend(0);

    let q = GuestQueue::new(&mem, GuestAddress(0x8000), QUEUE_SIZE);
    h.rng
        .activate(mem.clone(), vec![q.queue()], 0, h.irq.clone())
        .unwrap();
    assert_eq!(h.rng.queue_states().len(), 1);
    assert!(matches!(
        h.rng
            .activate(mem.clone(), vec![q.queue()], 0, h.irq.clone()),
        Err(ActivateError::AlreadyActive)
    ));
}

#[test]
fn activation_needs_one_ready_queue() {
    let mem = memory();
    let irq: Arc<CountingInterrupt> = Arc::default();
    let mut rng = Rng::new().unwrap();
    let err = rng
        .activate(mem.clone(), vec![], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            actual: 0
        }
    ));
    let not_ready = Queue::new(QUEUE_SIZE).unwrap();
    let err = rng.activate(mem, vec![not_ready], 0, irq).unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady { index: 0 }));
}
