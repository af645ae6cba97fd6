//! virtio-vsock through mock virtqueues and real Unix sockets: both directions of connection,
//! refusals, credit, shutdowns, the bound on what vmm holds, hostile packets, reset and the
//! event after a restore.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::{CONNECT_TIMEOUT, MAX_PENDING_RESETS};
use super::*;
use crate::virtio::test_utils::{r, w, CountingInterrupt, GuestQueue};

const CID: u64 = 3;
const MEM_END: u64 = 0x80_0000;
/// Where the guest's packets to the device are written (one 64 KiB + header slot each).
const TX_BUF: u64 = 0x10_0000;
/// Where the receive buffers are, `RX_SLOT` bytes apart.
const RX_BUF: u64 = 0x40_0000;
const RX_SLOT: u64 = 0x1_1000;
const RX_DATA: u32 = 4096;
const HDR: usize = virtio_vsock::packet::PKT_HEADER_SIZE;

/// A packet as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

fn header(
    src_port: u32,
    dst_port: u32,
    op: u16,
    len: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..8].copy_from_slice(&CID.to_le_bytes());
    h[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    h
}

fn parse(bytes: &[u8]) -> Pkt {
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
    assert_eq!(u16_at(28), TYPE_STREAM);
    let len = u32_at(24) as usize;
    Pkt {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
        data: bytes[HDR..HDR + len].to_vec(),
    }
}

/// A fresh directory for the test's sockets, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-vsock-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    event: GuestQueue<'a>,
    dev: Vsock,
    irq: Arc<CountingInterrupt>,
    path: PathBuf,
    _dir: Dir,
    rx_next: u64,
    rx_posted: u64,
    rx_used: u64,
    /// Packets received and not yet looked at by `expect_op`.
    inbox: std::collections::VecDeque<Pkt>,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, restored: bool) -> Self {
        let dir = Dir::new();
        let path = dir.0.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let rx = GuestQueue::new(mem, GuestAddress(0), QUEUE_SIZE);
        let tx = GuestQueue::new(mem, GuestAddress(0x4000), QUEUE_SIZE);
        let event = GuestQueue::new(mem, GuestAddress(0x8000), QUEUE_SIZE);
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = Vsock::new(CID, listener, path.clone(), restored).unwrap();
        dev.activate(
            mem.clone(),
            vec![rx.queue(), tx.queue(), event.queue()],
            AVAIL_FEATURES,
            irq.clone(),
        )
        .unwrap();
        Harness {
            mem,
            rx,
            tx,
            event,
            dev,
            irq,
            path,
            _dir: dir,
            rx_next: 0,
            rx_posted: 0,
            rx_used: 0,
            inbox: Default::default(),
        }
    }

    /// The guest sends one packet.
    fn send(&mut self, hdr: [u8; HDR], data: &[u8]) {
        self.mem.write_slice(&hdr, GuestAddress(TX_BUF)).unwrap();
        self.mem
            .write_slice(data, GuestAddress(TX_BUF + HDR as u64))
            .unwrap();
        self.tx.add_chain(&[r(TX_BUF, (HDR + data.len()) as u32)]);
        self.dev.process_queue(TX_QUEUE);
        assert_eq!(self.tx.take_used().len(), 1);
    }

    /// The guest posts `n` receive buffers (header and 4 KiB in one descriptor, as Linux 6.2+).
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = RX_BUF + (self.rx_next % 48) * RX_SLOT;
            self.rx_next += 1;
            self.rx_posted += 1;
            self.rx.add_chain(&[w(addr, HDR as u32 + RX_DATA)]);
        }
        self.dev.process_queue(RX_QUEUE);
    }

    /// The packets the device put in receive buffers since the last call.
    fn received(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        for (id, len) in self.rx.take_used() {
            self.rx_used += 1;
            if len == 0 {
                continue; // an unusable chain
            }
            let mut bytes = vec![0u8; len as usize];
            let addr = self.desc_addr(id as u16);
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            out.push(parse(&bytes));
        }
        out
    }

    fn desc_addr(&self, index: u16) -> u64 {
        // The descriptor table is at 0 in the rx queue: 16 bytes each, the address first.
        self.mem
            .read_obj(GuestAddress(16 * u64::from(index)))
            .unwrap()
    }

    /// Runs the host side until `done` says so (or 5 s).
    fn pump_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out");
            self.dev.process_backend(0);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs the host side until a packet with `op` comes; packets before it are kept for the
    /// next call.
    fn expect_op(&mut self, op: u16) -> Pkt {
        let mut found = None;
        self.pump_until(|h| {
            let fresh = h.received();
            h.inbox.extend(fresh);
            if let Some(i) = h.inbox.iter().position(|p| p.op == op) {
                found = h.inbox.remove(i);
                return true;
            }
            // A few buffers at a time, as a driver keeps its ring filled.
            if h.rx_posted - h.rx_used < 8 {
                h.post_rx(1);
            } else {
                h.dev.process_queue(RX_QUEUE);
            }
            false
        });
        found.unwrap()
    }

    fn peer_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.path.display()))
    }

    /// A host program connects to guest port `port`: returns its stream and the guest-side
    /// view of the REQUEST.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Pkt) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let req = self.expect_op(op::REQUEST);
        (host, req)
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn device_identity_and_config() {
    let mem = memory();
    let h = Harness::new(&mem, false);
    assert_eq!(h.dev.device_type(), 19);
    assert_eq!(h.dev.queue_max_sizes().len(), 3);
    let mut cid = [0u8; 8];
    h.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut past = [0xffu8; 4];
    h.dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    h.send(header(5000, 1234, op::REQUEST, 0, 65536, 0), &[]);
    h.post_rx(1);
    let got = h.received();
    assert_eq!(got.len(), 1);
    let rst = &got[0];
    assert_eq!(rst.op, op::RST);
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, CID));
    assert_eq!((rst.src_port, rst.dst_port), (1234, 5000));
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn guest_connection_carries_data_both_ways_and_closes() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let listener = UnixListener::bind(h.peer_path(52)).unwrap();
    h.send(header(5000, 52, op::REQUEST, 0, 65536, 0), &[]);
    h.post_rx(1);
    let resp = h.received();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].op, op::RESPONSE);
    assert_eq!((resp[0].src_port, resp[0].dst_port), (52, 5000));
    assert_eq!(resp[0].buf_alloc, CONN_BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();

    h.send(header(5000, 52, op::RW, 5, 65536, 0), b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");

    host.write_all(b"world!").unwrap();
    let data = h.expect_op(op::RW);
    assert_eq!(data.data, b"world!");
    assert_eq!((data.src_port, data.dst_port), (52, 5000));

    // The guest closes (Linux: SHUTDOWN with both flags); the device answers RST and the
    // host program reads end of file.
    let shutdown = with_flags(
        header(5000, 52, op::SHUTDOWN, 0, 65536, 6),
        SHUTDOWN_RCV | SHUTDOWN_SEND,
    );
    h.send(shutdown, &[]);
    let rst = h.expect_op(op::RST);
    assert_eq!((rst.src_port, rst.dst_port), (52, 5000));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn half_closes_each_way() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let listener = UnixListener::bind(h.peer_path(54)).unwrap();
    h.send(header(5002, 54, op::REQUEST, 0, 65536, 0), &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(h.expect_op(op::RESPONSE).dst_port, 5002);
    // The guest sends no more: the host reads its data, then end of file, and can still write.
    h.send(header(5002, 54, op::RW, 3, 65536, 0), b"abc");
    h.send(
        with_flags(header(5002, 54, op::SHUTDOWN, 0, 65536, 0), SHUTDOWN_SEND),
        &[],
    );
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    host.write_all(b"reply").unwrap();
    assert_eq!(h.expect_op(op::RW).data, b"reply");
    // Then the host sends no more either: neither side sends, the connection ends with RST.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.expect_op(op::RST);
    assert_eq!(h.dev.muxer.connections(), 0);
}

fn with_flags(mut h: [u8; HDR], flags: u32) -> [u8; HDR] {
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h
}

#[test]
fn host_connection_handshake_data_and_host_close() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let (mut host, req) = h.host_connect(7000);
    assert_eq!(req.dst_port, 7000);
    assert!(req.src_port >= 1 << 30);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    h.send(header(7000, req.src_port, op::RESPONSE, 0, 65536, 0), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));

    host.write_all(&[7u8; 10000]).unwrap();
    drop(host);
    let mut data = Vec::new();
    let mut reset = false;
    h.pump_until(|h| {
        h.post_rx(1);
        for p in h.received() {
            match p.op {
                op::RW => data.extend(p.data),
                op::RST => reset = true,
                _ => {}
            }
        }
        reset
    });
    assert_eq!(
        data,
        vec![7u8; 10000],
        "all the data comes before the reset"
    );
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn host_connection_to_a_guest_port_nobody_listens_on_is_closed() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let (mut host, req) = h.host_connect(7001);
    h.send(header(7001, req.src_port, op::RST, 0, 0, 0), &[]);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn a_guest_that_does_not_answer_or_a_host_that_sends_no_connect_line_times_out() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let mut silent = UnixStream::connect(&h.path).unwrap();
    let (mut unanswered, req) = h.host_connect(7002);
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    unanswered
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let start = Instant::now();
    let rst = h.expect_op(op::RST);
    assert_eq!(rst.src_port, req.src_port);
    assert!(start.elapsed() >= CONNECT_TIMEOUT - Duration::from_millis(500));
    assert_eq!(unanswered.read(&mut [0u8; 8]).unwrap(), 0);
    h.pump_until(|_| true);
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn a_timed_out_connection_waiting_for_receive_buffers_leaves_the_timer_alone() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    // No receive buffers at all: the REQUEST, then the RST, wait for them.
    let mut host = UnixStream::connect(&h.path).unwrap();
    host.write_all(b"CONNECT 7005\n").unwrap();
    h.pump_until(|h| h.dev.muxer.connections() == 1);
    let past = Instant::now() + CONNECT_TIMEOUT + Duration::from_millis(300);
    while Instant::now() < past {
        h.dev.process_backend(0);
        std::thread::sleep(Duration::from_millis(5));
    }
    h.dev.process_backend(0);
    // The RST is owed and cannot go: nothing is left to time, so the timer must not keep
    // firing (it did, every millisecond, before).
    assert!(!h.dev.muxer.timer_armed(), "the timer is still armed");
    assert_eq!(h.dev.muxer.connections(), 1);
    let rst = h.expect_op(op::RST);
    assert_eq!(rst.dst_port, 7005);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let (mut host, req) = h.host_connect(7003);
    // The guest gives 100 bytes of credit.
    h.send(header(7003, req.src_port, op::RESPONSE, 0, 100, 0), &[]);
    assert!(read_line(&mut host).starts_with("OK "));
    host.write_all(&[1u8; 1000]).unwrap();
    let first = h.expect_op(op::RW);
    assert_eq!(first.data.len(), 100);
    // No more data without credit: the device asks for it once.
    let ask = h.expect_op(op::CREDIT_REQUEST);
    assert_eq!(ask.dst_port, 7003);
    for _ in 0..20 {
        h.dev.process_backend(0);
        h.post_rx(1);
        assert!(h.received().iter().all(|p| p.op != op::RW));
    }
    // The guest consumed the 100 bytes and has room for 100 more.
    h.send(
        header(7003, req.src_port, op::CREDIT_UPDATE, 0, 100, 100),
        &[],
    );
    let second = h.expect_op(op::RW);
    assert_eq!(second.data.len(), 100);
}

#[test]
fn guest_data_past_its_credit_is_bounded_and_resets_the_connection() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let listener = UnixListener::bind(h.peer_path(53)).unwrap();
    h.send(header(5001, 53, op::REQUEST, 0, 65536, 0), &[]);
    let (_host, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![9u8; MAX_PKT_DATA as usize];
    let mut sent = 0usize;
    let mut reset = false;
    while sent < 64 << 20 && !reset {
        h.send(
            header(5001, 53, op::RW, chunk.len() as u32, 65536, 0),
            &chunk,
        );
        sent += chunk.len();
        assert!(h.dev.muxer.buffered() <= CONN_BUF_ALLOC as usize);
        h.post_rx(2);
        reset = h.received().iter().any(|p| p.op == op::RST);
    }
    assert!(reset, "a guest sending past its credit is reset");
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn hostile_packets_get_resets_or_nothing() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    // Wrong source CID: dropped without a reply.
    let mut bad = header(1, 2, op::REQUEST, 0, 0, 0);
    bad[0..8].copy_from_slice(&99u64.to_le_bytes());
    h.send(bad, &[]);
    // Not a stream: RST.
    let mut dgram = header(3, 4, op::REQUEST, 0, 0, 0);
    dgram[28..30].copy_from_slice(&2u16.to_le_bytes());
    h.send(dgram, &[]);
    // Unknown operation, data for no connection: RST each.
    h.send(header(5, 6, 99, 0, 0, 0), &[]);
    h.send(header(7, 8, op::RW, 3, 0, 0), b"abc");
    // A length past the chain, and past the packet limit: the chain is dropped.
    h.mem
        .write_slice(&header(9, 10, op::RW, 1 << 20, 0, 0), GuestAddress(TX_BUF))
        .unwrap();
    h.tx.add_chain(&[r(TX_BUF, HDR as u32)]);
    h.dev.process_queue(TX_QUEUE);
    h.mem
        .write_slice(&header(9, 10, op::RW, 100, 0, 0), GuestAddress(TX_BUF))
        .unwrap();
    h.tx.add_chain(&[r(TX_BUF, HDR as u32 + 10)]);
    h.dev.process_queue(TX_QUEUE);
    // A chain too short for a header, a writable transmit chain, a readable receive chain.
    h.tx.add_chain(&[r(TX_BUF, 8)]);
    h.tx.add_chain(&[w(TX_BUF, 64)]);
    h.tx.add_chain(&[r(MEM_END - 8, 64)]);
    h.dev.process_queue(TX_QUEUE);
    assert_eq!(h.tx.take_used().len(), 5);
    h.rx.add_chain(&[r(RX_BUF, 4096)]);
    h.dev.process_queue(RX_QUEUE);
    h.post_rx(8);
    let got = h.received();
    let resets: Vec<_> = got
        .iter()
        .filter(|p| p.op == op::RST)
        .map(|p| p.dst_port)
        .collect();
    assert_eq!(resets, vec![3, 5, 7], "{got:?}");
}

#[test]
fn a_flood_of_refused_requests_keeps_a_bounded_queue_of_resets() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    for port in 0..(MAX_PENDING_RESETS as u32 + 500) {
        h.send(header(port, 1, op::REQUEST, 0, 0, 0), &[]);
    }
    assert_eq!(h.dev.muxer.pending_resets(), MAX_PENDING_RESETS);
    assert_eq!(h.dev.muxer.connections(), 0);
}

#[test]
fn device_reset_closes_every_connection() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let (mut host, req) = h.host_connect(7004);
    h.send(header(7004, req.src_port, op::RESPONSE, 0, 65536, 0), &[]);
    assert!(read_line(&mut host).starts_with("OK "));
    h.dev.reset();
    assert!(!h.dev.is_activated());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn a_restored_device_tells_the_guest_its_connections_are_gone() {
    let mem = memory();
    let mut h = Harness::new(&mem, true);
    h.event.add_chain(&[w(0x20_0000, 4)]);
    h.dev.process_queue(EVENT_QUEUE);
    assert_eq!(h.event.take_used(), vec![(0, 4)]);
    let event: u32 = h.mem.read_obj(GuestAddress(0x20_0000)).unwrap();
    assert_eq!(event, EVENT_TRANSPORT_RESET);
    // Once only.
    h.event.add_chain(&[w(0x20_0000, 4)]);
    h.dev.process_queue(EVENT_QUEUE);
    assert!(h.event.take_used().is_empty());
    assert!(h.irq.used() >= 1);
    // A device that was not restored sends nothing.
    let mut fresh = Harness::new(&mem, false);
    fresh.event.add_chain(&[w(0x20_0000, 4)]);
    fresh.dev.process_queue(EVENT_QUEUE);
    assert!(fresh.event.take_used().is_empty());
}

#[test]
fn two_connections_share_the_read_ahead_and_each_gets_its_own_bytes_in_order() {
    let mem = memory();
    let mut h = Harness::new(&mem, false);
    let mut hosts = Vec::new();
    for (i, port) in [7100u32, 7101].into_iter().enumerate() {
        let (mut host, req) = h.host_connect(port);
        h.send(header(port, req.src_port, op::RESPONSE, 0, 1 << 20, 0), &[]);
        assert!(read_line(&mut host).starts_with("OK "));
        let bytes: Vec<u8> = (0..100_000u32)
            .map(|b| (b as u8) ^ (i as u8 * 0x55))
            .collect();
        hosts.push((host, req.src_port, bytes));
    }
    for (host, _, bytes) in &mut hosts {
        host.write_all(bytes).unwrap();
    }
    let mut got = [Vec::new(), Vec::new()];
    h.pump_until(|h| {
        h.post_rx(1);
        for p in h.received() {
            if p.op == op::RW {
                let i = hosts
                    .iter()
                    .position(|(_, port, _)| *port == p.src_port)
                    .unwrap();
                got[i].extend(p.data);
            }
        }
        got.iter()
            .zip(&hosts)
            .all(|(g, (_, _, b))| g.len() >= b.len())
    });
    for (g, (_, _, b)) in got.iter().zip(&hosts) {
        assert!(g == b, "a connection's bytes came out of order or mixed");
    }
}
