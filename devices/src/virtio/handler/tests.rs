//! The handler on a real `EventManager`, with a virtio-net device on a socket-pair backend
//! behind a real virtio-mmio transport.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::mmio::{regs, MmioTransport};
use crate::virtio::net::{Net, QUEUE_SIZE, RX_QUEUE, VNET_HDR_LEN};
use crate::virtio::test_utils::mmio::start_device;
use crate::virtio::test_utils::net::seqpacket_pair;
use crate::virtio::test_utils::{w, GuestQueue};
use crate::virtio::{EventFdInterrupt, VIRTIO_F_VERSION_1};
use crate::BusDevice;

const MEM_SIZE: usize = 0x10_0000;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const A: u64 = 0x1_0000;
const B: u64 = 0x2_0000;
/// How long a test waits for an event it expects (the wait ends when the event comes).
const EVENT_TIMEOUT_MS: i32 = 5000;
/// How long a test waits to see that no event comes.
const QUIET_MS: i32 = 100;

/// A header (all zero: no offloads) and a `len`-byte Ethernet frame whose bytes depend on
/// `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f
}

/// `frame` as the guest sees it: `num_buffers` (le16 at byte 10) is 1.
fn as_received(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[10] = 1;
    f
}

fn guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// A virtio-net device on a socket-pair backend (the peer is returned) behind a started
/// virtio-mmio transport: VERSION_1 only (no EVENT_IDX, no mergeable buffers, no offloads),
/// both queues at `RXQ` and `TXQ`.
fn started_net() -> (
    GuestMemoryMmap,
    Arc<Mutex<dyn VirtioDevice>>,
    MmioTransport,
    std::os::unix::net::UnixDatagram,
) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (backend, peer) = seqpacket_pair();
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Net::new(
        backend,
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    )));
    let irq = Arc::new(EventFdInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut transport = MmioTransport::new(mem.clone(), device.clone(), irq).unwrap();
    let size = u32::from(QUEUE_SIZE);
    start_device(
        &mut transport,
        1 << VIRTIO_F_VERSION_1,
        &[(size, RXQ), (size, TXQ)],
    );
    (mem, device, transport, peer)
}

/// The contract hole of issue 8: a receive-queue notification that no ioeventfd catches
/// (here: none is registered) traps into the transport. It must reach the event loop, which
/// then sees that the device wants backend input again; processed on the vCPU thread, it
/// would leave the backend unpolled for good.
#[test]
fn a_trapped_receive_notify_resumes_a_paused_backend() {
    let (mem, device, mut transport, peer) = started_net();
    let mut rxq = GuestQueue::new(&mem, GuestAddress(RXQ), QUEUE_SIZE);
    let mut event_loop = EventManager::<Arc<Mutex<QueueHandler>>>::new().unwrap();
    event_loop.add_subscriber(Arc::new(Mutex::new(transport.queue_handler().unwrap())));

    // A frame waits in the backend, and the guest has posted no receive buffer: the device
    // leaves the frame there and wants no more input, so the loop stops polling the
    // descriptor, readable as it is.
    let f = frame(100, 1);
    peer.send(&f).unwrap();
    assert_eq!(event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(), 1);
    assert!(!device.lock().unwrap().backend_wanted(0));
    assert_eq!(
        event_loop.run_with_timeout(QUIET_MS).unwrap(),
        0,
        "the backend is paused"
    );

    // The driver posts two buffers and notifies the receive queue; the write traps.
    let first = rxq.add_chain(&[w(A, 2048)]);
    let second = rxq.add_chain(&[w(B, 2048)]);
    let index = (RX_QUEUE as u32).to_le_bytes();
    transport.write(0xd000_0000, regs::QUEUE_NOTIFY, &index);
    assert_eq!(rxq.take_used(), [], "nothing runs on the vCPU thread");
    assert_eq!(
        event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(),
        1,
        "the notification reaches the event loop"
    );
    assert_eq!(rxq.take_used(), [(u32::from(first), f.len() as u32)]);
    assert_eq!(guest(&mem, A, f.len()), as_received(&f));

    // A buffer is left, so the backend is polled again: the next frame goes straight in.
    let g = frame(60, 2);
    peer.send(&g).unwrap();
    assert_eq!(
        event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap(),
        1,
        "the backend is polled again"
    );
    assert_eq!(rxq.take_used(), [(u32::from(second), g.len() as u32)]);
    assert_eq!(guest(&mem, B, g.len()), as_received(&g));
}

/// Counts the events of one eventfd, for the fairness test.
struct Other {
    evt: EventFd,
    served: usize,
}

impl MutEventSubscriber for Other {
    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.served += 1;
    }
}

/// Frames waiting at the peer, taken.
fn drain(peer: &std::os::unix::net::UnixDatagram) -> usize {
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while peer.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Issue 23: a guest that keeps a queue full cannot keep the event loop in its device. One
/// event-loop round takes at most `CHAINS_PER_RUN` chains; the handler signals the queue
/// itself for the rest, and every other ready descriptor is served in between.
#[test]
fn a_full_queue_is_served_in_turns_with_everyone_else() {
    let (mem, _device, mut transport, peer) = started_net();
    let mut txq = GuestQueue::new(&mem, GuestAddress(TXQ), QUEUE_SIZE);
    let f = frame(60, 3);
    mem.write_slice(&f, GuestAddress(A)).unwrap();
    let frames = 2 * crate::virtio::CHAINS_PER_RUN + 10;
    for _ in 0..frames {
        txq.add_chain(&[crate::virtio::test_utils::r(A, f.len() as u32)]);
    }

    let mut event_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber>>>::new().unwrap();
    event_loop.add_subscriber(Arc::new(Mutex::new(transport.queue_handler().unwrap())));
    let other = Arc::new(Mutex::new(Other {
        evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        served: 0,
    }));
    event_loop.add_subscriber(other.clone());

    let index = (crate::virtio::net::TX_QUEUE as u32).to_le_bytes();
    transport.write(0xd000_0000, regs::QUEUE_NOTIFY, &index);
    let mut sent = Vec::new();
    let mut others = Vec::new();
    while sent.iter().sum::<usize>() < frames && sent.len() < 10 {
        // Someone else has something ready each round.
        other.lock().unwrap().evt.write(1).unwrap();
        event_loop.run_with_timeout(EVENT_TIMEOUT_MS).unwrap();
        sent.push(drain(&peer));
        others.push(other.lock().unwrap().served);
    }
    let per_run = crate::virtio::CHAINS_PER_RUN;
    assert_eq!(sent, [per_run, per_run, 10], "frames sent per round");
    assert_eq!(
        others,
        [1, 2, 3],
        "the other descriptor was served every round"
    );
    assert_eq!(txq.take_used().len(), frames);
    assert_eq!(
        event_loop.run_with_timeout(QUIET_MS).unwrap(),
        0,
        "nothing is left to do: the loop does not spin"
    );
}
