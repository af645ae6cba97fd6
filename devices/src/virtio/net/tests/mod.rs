//! Tests of the virtio-net device on a mock backend and a socket pair (and a real TAP where
//! one can be made), by topic: the device as a whole, transmit, receive, real backends.

mod backends;
mod device;
mod rx;
mod tx;

use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::test_utils::net::Mock;
use crate::virtio::test_utils::{r, w, Buf, CountingInterrupt, GuestQueue};

/// Two adjacent 2 MiB regions, so a buffer can straddle the boundary at 0x20_0000.
const REGION: u64 = 0x20_0000;
const MEM_END: u64 = 2 * REGION;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const A: u64 = 0x1_0000;
const B: u64 = 0x2_0000;
const C: u64 = 0x3_0000;
/// Room for the largest frame, from here to the end of the first region and beyond.
const BIG: u64 = 0x10_0000;
const NO_EVENT_IDX: u64 = !(1 << VIRTIO_RING_F_EVENT_IDX);
const NO_MRG: u64 = NO_EVENT_IDX & !(1 << VIRTIO_NET_F_MRG_RXBUF);

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// A header as a TAP with offloads writes it: NEEDS_CSUM, gso_type NONE, hdr_len 0x36,
/// gso_size 0, csum_start 0x22, csum_offset 0x10, and junk where `num_buffers` goes.
const TAP_HEADER: [u8; VNET_HDR_LEN] = [1, 0, 0x36, 0, 0, 0, 0x22, 0, 0x10, 0, 0xaa, 0xbb];

/// A header and a `len`-byte Ethernet frame whose bytes depend on `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = TAP_HEADER.to_vec();
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    f
}

/// `frame` as the guest must see it: `num_buffers` set, and `flags` cleared without
/// GUEST_CSUM.
fn as_received(frame: &[u8], num_buffers: u16, guest_csum: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    if !guest_csum {
        f[0] = 0;
    }
    f
}

struct Harness<'a, B: NetBackend = Mock> {
    mem: &'a GuestMemoryMmap,
    rxq: GuestQueue<'a>,
    txq: GuestQueue<'a>,
    net: Net<B>,
    irq: Arc<CountingInterrupt>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> (Self, Mock) {
        Self::with(mem, NO_EVENT_IDX)
    }

    fn with(mem: &'a GuestMemoryMmap, features: u64) -> (Self, Mock) {
        let mock = Mock::new();
        (Self::on(mem, mock.clone(), features), mock)
    }
}

impl<'a, B: NetBackend> Harness<'a, B> {
    fn on(mem: &'a GuestMemoryMmap, backend: B, features: u64) -> Self {
        let mut h = Self {
            mem,
            rxq: GuestQueue::new(mem, GuestAddress(RXQ), QUEUE_SIZE),
            txq: GuestQueue::new(mem, GuestAddress(TXQ), QUEUE_SIZE),
            net: Net::new(backend, [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            irq: Arc::default(),
        };
        h.activate(features);
        h
    }

    fn activate(&mut self, features: u64) {
        let acked = AVAIL_FEATURES & features;
        let event_idx = acked & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let (mut rx, mut tx) = (self.rxq.queue(), self.txq.queue());
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        self.net
            .activate(self.mem.clone(), vec![rx, tx], acked, self.irq.clone())
            .unwrap();
    }

    fn fill(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Offers `bufs` as one transmit chain, runs the queue, and returns the used length;
    /// the chain must come back, alone.
    fn send(&mut self, bufs: &[Buf]) -> u32 {
        let head = self.txq.add_chain(bufs);
        self.net.process_queue(TX_QUEUE);
        let used = self.txq.take_used();
        assert_eq!(used.len(), 1, "{used:?}");
        assert_eq!(used[0].0, u32::from(head));
        used[0].1
    }

    /// Offers `bufs` as one receive chain.
    fn post(&mut self, bufs: &[Buf]) -> u32 {
        u32::from(self.rxq.add_chain(bufs))
    }

    /// Fills guest memory at `bufs` with 0xee (to see what the device writes).
    fn clear(&self, bufs: &[Buf]) {
        for b in bufs {
            self.fill(b.addr, &vec![0xee; b.len as usize]);
        }
    }

    /// The bytes of used receive entry `(head, len)` whose chain was `bufs`.
    fn received(&self, bufs: &[Buf], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for b in bufs {
            let n = left.min(b.len as usize);
            out.extend(self.guest(b.addr, n));
            left -= n;
        }
        assert_eq!(left, 0, "used length beyond the chain");
        out
    }

    fn stats(&self) -> NetStats {
        self.net.counters().snapshot()
    }
}

impl Harness<'_> {
    /// A frame still goes out, and one still comes in.
    fn assert_still_works(&mut self, mock: &Mock) {
        let f = frame(100, 0x5a);
        self.fill(C, &f);
        let sent = mock.state().tx.len();
        assert_eq!(self.send(&[r(C, f.len() as u32)]), 0);
        assert_eq!(mock.state().tx.len(), sent + 1);
        assert_eq!(mock.state().tx.last().unwrap(), &f);

        let f = frame(60, 0xa5);
        mock.state().rx.push_back(f.clone());
        let bufs = [w(C, 2048)];
        let head = self.post(&bufs);
        // A second buffer, so that the device has room left and wants backend input.
        self.post(&[w(C + 0x1000, 2048)]);
        self.net.process_backend(0);
        let used = self.rxq.take_used();
        assert_eq!(used.last(), Some(&(head, f.len() as u32)), "{used:?}");
        assert_eq!(self.received(&bufs, f.len() as u32)[12..], f[12..]);
        assert!(self.net.backend_wanted(0));
    }
}
