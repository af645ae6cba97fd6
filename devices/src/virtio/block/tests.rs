//! virtio-blk on a temporary disk image: requests through a mock virtqueue, good and hostile.

use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use virtio_queue::QueueT;

use super::request::transfer_all;
use super::*;
use crate::virtio::test_utils::{r, w, Buf, CountingInterrupt, GuestQueue};
use crate::virtio::IOV_MAX;

/// Two adjacent 2 MiB regions, so a buffer can straddle the boundary at 0x20_0000.
const REGION: u64 = 0x20_0000;
const MEM_END: u64 = 2 * REGION;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_1000;
const INDIRECT: u64 = 0x3_0000;
const DATA: u64 = 0x4_0000;
const DATA2: u64 = 0x8_0000;
const DATA3: u64 = 0xc_0000;
const SECTORS: u64 = 64;
const ALL_FEATURES_BUT_EVENT_IDX: u64 = !(1 << VIRTIO_RING_F_EVENT_IDX);

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

/// Byte `i` of the initial disk image: differs between neighbouring bytes and sectors.
fn pattern(i: u64) -> u8 {
    ((i % 251) as u8) ^ ((i / 512) as u8).rotate_left(3)
}

fn disk_image(sectors: u64) -> TempFile {
    let tmp = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE).map(pattern).collect();
    tmp.as_file().write_all_at(&bytes, 0).unwrap();
    tmp
}

fn open(tmp: &TempFile, read_only: bool) -> File {
    File::options()
        .read(true)
        .write(!read_only)
        .open(tmp.as_path())
        .unwrap()
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    q: GuestQueue<'a>,
    block: Block,
    irq: Arc<CountingInterrupt>,
    tmp: TempFile,
}

impl<'a> Harness<'a> {
    fn with(mem: &'a GuestMemoryMmap, tmp: TempFile, read_only: bool, features: u64) -> Self {
        let block = Block::new(open(&tmp, read_only), read_only, Some("test-disk".into())).unwrap();
        let mut h = Self {
            mem,
            q: GuestQueue::new(mem, GuestAddress(0), QUEUE_SIZE),
            block,
            irq: Arc::default(),
            tmp,
        };
        h.activate(features);
        h
    }

    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self::with(mem, disk_image(SECTORS), false, ALL_FEATURES_BUT_EVENT_IDX)
    }

    fn activate(&mut self, features: u64) {
        let mut queue = self.q.queue();
        let acked = self.block.avail_features() & features;
        queue.set_event_idx(acked & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0);
        self.block
            .activate(self.mem.clone(), vec![queue], acked, self.irq.clone())
            .unwrap();
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&request_type.to_le_bytes());
        raw[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // reserved: ignored
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    }

    /// Offers `bufs` as one chain, runs the queue and returns the used length; the chain
    /// must come back, alone.
    fn submit(&mut self, bufs: &[Buf]) -> u32 {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.q.add_chain(bufs);
        self.block.process_queue(0);
        let used = self.q.take_used();
        assert_eq!(used.len(), 1, "{used:?}");
        assert_eq!(used[0].0, u32::from(head));
        used[0].1
    }

    /// A request whose last descriptor is the status byte at `STATUS`; returns
    /// `(used length, status byte)`.
    fn request(&mut self, request_type: u32, sector: u64, data: &[Buf]) -> (u32, u8) {
        self.header(request_type, sector);
        let mut bufs = vec![r(HDR, 16)];
        bufs.extend_from_slice(data);
        bufs.push(w(STATUS, 1));
        let len = self.submit(&bufs);
        (len, self.status())
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn fill(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// The disk image, or its first MiB (all that tests write; some images are huge
    /// sparse files).
    fn disk(&self) -> Vec<u8> {
        let len = self.tmp.as_file().metadata().unwrap().len().min(1 << 20);
        let mut bytes = vec![0u8; len as usize];
        self.tmp.as_file().read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    fn stats(&self) -> BlockStats {
        self.block.counters().snapshot()
    }

    /// A valid one-sector read still works and returns the right bytes.
    fn assert_still_works(&mut self) {
        self.fill(DATA, &[0u8; 512]);
        let (len, status) = self.request(VIRTIO_BLK_T_IN, 7, &[w(DATA, 512)]);
        assert_eq!((len, status), (513, VIRTIO_BLK_S_OK as u8));
        assert_eq!(self.guest(DATA, 512), self.disk()[7 * 512..8 * 512]);
    }
}

fn image_bytes(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(pattern).collect()
}

#[test]
fn read_copies_sectors_into_guest_memory() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.fill(DATA, &[0xaa; 1024 + 16]);
    let (len, status) = h.request(VIRTIO_BLK_T_IN, 3, &[w(DATA, 1024)]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(len, 1024 + 1, "data bytes plus the status byte");
    assert_eq!(h.guest(DATA, 1024), image_bytes(3 * 512..5 * 512));
    assert_eq!(
        h.guest(DATA + 1024, 16),
        [0xaa; 16],
        "nothing past the buffer"
    );
    let stats = h.stats();
    assert_eq!(
        (stats.requests, stats.reads, stats.bytes_read),
        (1, 1, 1024)
    );
    assert_eq!((stats.errors, stats.notifications), (0, 1));
    assert_eq!(h.irq.used(), 1);
}

#[test]
fn write_reaches_the_disk_and_nothing_else() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 1) as u8).collect();
    h.fill(DATA, &data);
    let before = h.disk();
    let (len, status) = h.request(VIRTIO_BLK_T_OUT, 5, &[r(DATA, 1024)]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
    let after = h.disk();
    assert_eq!(after[5 * 512..7 * 512], data[..]);
    assert_eq!(after[..5 * 512], before[..5 * 512]);
    assert_eq!(after[7 * 512..], before[7 * 512..]);
    let stats = h.stats();
    assert_eq!(
        (stats.writes, stats.bytes_written, stats.errors),
        (1, 1024, 0)
    );
}

#[test]
fn multi_segment_read_and_write() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // Write three scattered segments (512 + 1024 + 512) as sectors 10..14.
    let seg = |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| seed ^ (i as u8)).collect() };
    let (a, b, c) = (seg(512, 0x11), seg(1024, 0x22), seg(512, 0x33));
    h.fill(DATA, &a);
    h.fill(DATA2, &b);
    h.fill(DATA3, &c);
    let (len, status) = h.request(
        VIRTIO_BLK_T_OUT,
        10,
        &[r(DATA, 512), r(DATA2, 1024), r(DATA3, 512)],
    );
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
    let disk = h.disk();
    assert_eq!(disk[10 * 512..11 * 512], a[..]);
    assert_eq!(disk[11 * 512..13 * 512], b[..]);
    assert_eq!(disk[13 * 512..14 * 512], c[..]);

    // Read sectors 9..13 back into three other segments (1024 + 512 + 512).
    for addr in [DATA, DATA2, DATA3] {
        h.fill(addr, &[0; 1024]);
    }
    let (len, status) = h.request(
        VIRTIO_BLK_T_IN,
        9,
        &[w(DATA3, 1024), w(DATA, 512), w(DATA2, 512)],
    );
    assert_eq!((len, status), (2049, VIRTIO_BLK_S_OK as u8));
    assert_eq!(h.guest(DATA3, 1024), disk[9 * 512..11 * 512]);
    assert_eq!(h.guest(DATA, 512), disk[11 * 512..12 * 512]);
    assert_eq!(h.guest(DATA2, 512), disk[12 * 512..13 * 512]);
}

#[test]
fn buffers_may_straddle_guest_memory_regions() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let start = REGION - 512; // half in each region
    let (len, status) = h.request(VIRTIO_BLK_T_IN, 20, &[w(start, 1024)]);
    assert_eq!((len, status), (1025, VIRTIO_BLK_S_OK as u8));
    assert_eq!(h.guest(start, 1024), image_bytes(20 * 512..22 * 512));

    let data: Vec<u8> = (0..1024u32).map(|i| (i % 13) as u8).collect();
    h.fill(start, &data);
    let (_, status) = h.request(VIRTIO_BLK_T_OUT, 30, &[r(start, 1024)]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.disk()[30 * 512..32 * 512], data[..]);
}

#[test]
fn large_requests_with_many_segments() {
    let mem = memory();
    let tmp = disk_image(4096); // 2 MiB
    let mut h = Harness::with(&mem, tmp, false, ALL_FEATURES_BUT_EVENT_IDX);
    // SEG_MAX segments of 4 KiB, every other page, read from sector 8.
    let segs: Vec<Buf> = (0..SEG_MAX as u64)
        .map(|i| w(0x10_0000 + i * 0x2000, 4096))
        .collect();
    let (len, status) = h.request(VIRTIO_BLK_T_IN, 8, &segs);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(len, SEG_MAX * 4096 + 1);
    for (i, seg) in segs.iter().enumerate() {
        let at = 8 * 512 + i as u64 * 4096;
        assert_eq!(
            h.guest(seg.addr, 4096),
            image_bytes(at..at + 4096),
            "segment {i}"
        );
    }
}

#[test]
fn flush_succeeds_and_is_counted() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    // FLUSH ignores `sector`, even one far past the end.
    let (len, status) = h.request(VIRTIO_BLK_T_FLUSH, u64::MAX, &[]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
    assert_eq!(h.stats().flushes, 1);
    assert_eq!(h.stats().errors, 0);
}

#[test]
fn writes_go_through_when_flush_is_not_negotiated() {
    let mem = memory();
    let features = ALL_FEATURES_BUT_EVENT_IDX & !feature_bit(VIRTIO_BLK_F_FLUSH);
    let mut h = Harness::with(&mem, disk_image(SECTORS), false, features);
    assert!(h.block.disk.write_through);
    h.fill(DATA, &[0x5a; 512]);
    let (_, status) = h.request(VIRTIO_BLK_T_OUT, 1, &[r(DATA, 512)]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.disk()[512..1024], [0x5a; 512]);
    h.block.reset();
    assert!(!h.block.disk.write_through);
}

#[test]
fn get_id_returns_the_padded_id() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.fill(DATA, &[0xee; 32]);
    let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[w(DATA, 32)]);
    assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
    let mut expected = b"test-disk".to_vec();
    expected.resize(ID_BYTES, 0);
    expected.extend_from_slice(&[0xee; 12]);
    assert_eq!(h.guest(DATA, 32), expected);

    // Split over two short buffers.
    h.fill(DATA, &[0xee; 8]);
    h.fill(DATA2, &[0xee; 32]);
    let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[w(DATA, 4), w(DATA2, 32)]);
    assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
    assert_eq!(h.guest(DATA, 8), b"test\xee\xee\xee\xee");
    assert_eq!(h.guest(DATA2, 16), b"-disk\0\0\0\0\0\0\0\0\0\0\0");

    // No buffer, or a device-readable one: IOERR.
    let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
    let (_, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[r(DATA, 20)]);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn default_id_comes_from_inode_and_device() {
    let tmp = disk_image(1);
    let meta = tmp.as_file().metadata().unwrap();
    let block = Block::new(open(&tmp, true), true, None).unwrap();
    let expected = format!("{:x}-{:x}", meta.ino(), meta.dev());
    let len = expected.len().min(ID_BYTES);
    assert_eq!(block.id()[..len], expected.as_bytes()[..len]);
    assert!(block.id()[len..].iter().all(|&b| b == 0));
    assert_ne!(block.id(), &[0; ID_BYTES]);
}

#[test]
fn id_longer_than_20_bytes_is_refused() {
    let tmp = disk_image(1);
    let ok = Block::new(open(&tmp, true), true, Some("x".repeat(20))).unwrap();
    assert_eq!(ok.id(), &[b'x'; 20]);
    let err = Block::new(open(&tmp, true), true, Some("x".repeat(21))).unwrap_err();
    assert!(matches!(err, BlockError::IdTooLong { .. }), "{err:?}");
    assert!(err.to_string().contains("21 bytes"), "{err}");
}

#[test]
fn config_space_and_features() {
    // 1 MiB + 100 bytes: the partial sector is not part of the capacity.
    let tmp = TempFile::new().unwrap();
    tmp.as_file().set_len(0x10_0000 + 100).unwrap();
    let block = Block::new(open(&tmp, false), false, None).unwrap();
    assert_eq!(block.capacity(), 2048);
    assert_eq!(block.device_type(), 2);
    assert_eq!(block.queue_max_sizes(), &[256]);

    let read = |offset: u64, len: usize| {
        let mut data = vec![0xffu8; len];
        block.read_config(offset, &mut data);
        data
    };
    assert_eq!(read(0, 8), 2048u64.to_le_bytes());
    assert_eq!(read(0, 4), 2048u32.to_le_bytes());
    assert_eq!(read(4, 4), [0; 4]);
    assert_eq!(read(1, 1), [8]); // 2048 = 0x800
    assert_eq!(read(12, 4), 254u32.to_le_bytes(), "seg_max");
    assert_eq!(read(20, 4), 512u32.to_le_bytes(), "blk_size");
    assert_eq!(read(8, 4), [0; 4], "size_max is not offered");
    assert_eq!(read(21, 4), [2, 0, 0, 0], "partly past the end");
    assert_eq!(read(24, 8), [0; 8], "past the end");
    assert_eq!(read(u64::MAX, 4), [0; 4]);

    let features = block.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(features & feature_bit(bit), 0, "bit {bit}");
    }
    assert_eq!(features & feature_bit(VIRTIO_BLK_F_RO), 0);
    let ro = Block::new(open(&tmp, true), true, None).unwrap();
    assert_ne!(ro.avail_features() & feature_bit(VIRTIO_BLK_F_RO), 0);
    assert!(ro.read_only());

    // Writes to the configuration space change nothing.
    let mut block = block;
    block.write_config(0, &[1, 2, 3, 4]);
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let mem = memory();
    let mut h = Harness::with(&mem, disk_image(SECTORS), true, ALL_FEATURES_BUT_EVENT_IDX);
    let before = h.disk();
    h.fill(DATA, &[0x77; 1024]);
    let (len, status) = h.request(VIRTIO_BLK_T_OUT, 2, &[r(DATA, 1024)]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(h.disk(), before);
    assert_eq!(h.stats().bytes_written, 0);
    assert_eq!(h.stats().errors, 1);
    // Reads and flushes still work.
    h.assert_still_works();
    let (_, status) = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let before = h.disk();
    // DISCARD, WRITE_ZEROES (not offered), SCSI, and nonsense.
    for t in [11, 13, 2, 0xdead_beef] {
        let (len, status) = h.request(t, 0, &[r(DATA, 512)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP as u8), "type {t:#x}");
    }
    assert_eq!(h.disk(), before);
    assert_eq!(h.stats().errors, 4);
    h.assert_still_works();
}

/// A request that must be answered IOERR with used length 1 and leave disk and data alone.
fn assert_ioerr(h: &mut Harness, request_type: u32, sector: u64, data: &[Buf]) {
    let disk = h.disk();
    h.fill(DATA, &[0x3c; 1024]);
    let errors = h.stats().errors;
    let (len, status) = h.request(request_type, sector, data);
    assert_eq!(
        (len, status),
        (1, VIRTIO_BLK_S_IOERR as u8),
        "type {request_type} sector {sector} {data:?}"
    );
    assert_eq!(h.disk(), disk, "disk changed");
    assert_eq!(h.guest(DATA, 1024), [0x3c; 1024], "guest buffer changed");
    assert_eq!(h.stats().errors, errors + 1);
    h.assert_still_works();
}

#[test]
fn bad_lengths_and_ranges_are_io_errors() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        let dir = |addr, len| {
            if t == VIRTIO_BLK_T_IN {
                w(addr, len)
            } else {
                r(addr, len)
            }
        };
        // Not a multiple of 512, in one or several descriptors.
        assert_ioerr(&mut h, t, 0, &[dir(DATA, 500)]);
        assert_ioerr(&mut h, t, 0, &[dir(DATA, 512), dir(DATA2, 1)]);
        // Past the end, at the end, straddling the end, overflowing.
        assert_ioerr(&mut h, t, SECTORS, &[dir(DATA, 512)]);
        assert_ioerr(&mut h, t, SECTORS - 1, &[dir(DATA, 1024)]);
        assert_ioerr(&mut h, t, u64::MAX, &[dir(DATA, 512)]);
        assert_ioerr(&mut h, t, u64::MAX / 512, &[dir(DATA, 512)]);
        assert_ioerr(&mut h, t, u64::MAX / 512 + 1, &[dir(DATA, 512)]);
        // A huge length (and a sum of lengths) beyond the disk.
        assert_ioerr(&mut h, t, 0, &[dir(DATA, 0xffff_fe00)]);
        assert_ioerr(
            &mut h,
            t,
            0,
            &[dir(DATA, 0x8000_0000), dir(DATA2, 0x7fff_fe00)],
        );
    }
    // The last sector itself is fine.
    let (_, status) = h.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[w(DATA, 512)]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.guest(DATA, 512), h.disk()[(SECTORS as usize - 1) * 512..]);
}

#[test]
fn buffers_outside_guest_memory_are_io_errors() {
    let mem = memory();
    // A sparse 8 GiB image, so huge requests pass the capacity check and reach memory.
    let tmp = TempFile::new().unwrap();
    tmp.as_file().set_len(8 << 30).unwrap();
    let mut h = Harness::with(&mem, tmp, false, ALL_FEATURES_BUT_EVENT_IDX);
    for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        let dir = |addr, len| {
            if t == VIRTIO_BLK_T_IN {
                w(addr, len)
            } else {
                r(addr, len)
            }
        };
        assert_ioerr(&mut h, t, 0, &[dir(MEM_END, 512)]);
        assert_ioerr(&mut h, t, 0, &[dir(MEM_END - 512, 1024)]);
        assert_ioerr(&mut h, t, 0, &[dir(u64::MAX - 511, 512)]);
        assert_ioerr(&mut h, t, 0, &[dir(DATA, 0xffff_fe00)]);
        // A good first segment does not get transferred when a later one is bad.
        assert_ioerr(&mut h, t, 0, &[dir(DATA, 512), dir(MEM_END + 0x1000, 512)]);
    }
    assert_eq!(h.stats().bytes_read, 512 * 10, "only the still-works reads");
    assert_eq!(h.stats().bytes_written, 0);
}

#[test]
fn data_descriptors_in_the_wrong_direction_are_io_errors() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    assert_ioerr(&mut h, VIRTIO_BLK_T_IN, 0, &[r(DATA, 512)]);
    assert_ioerr(&mut h, VIRTIO_BLK_T_IN, 0, &[w(DATA2, 512), r(DATA, 512)]);
    assert_ioerr(&mut h, VIRTIO_BLK_T_OUT, 0, &[w(DATA, 512)]);
    assert_ioerr(&mut h, VIRTIO_BLK_T_OUT, 0, &[r(DATA2, 512), w(DATA, 512)]);
}

#[test]
fn bad_headers_are_io_errors() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let disk = h.disk();
    h.fill(DATA, &[0x11; 512]);
    let cases: [&[Buf]; 5] = [
        // Too short.
        &[r(HDR, 8), r(DATA, 512), w(STATUS, 1)],
        &[r(HDR, 0), r(DATA, 512), w(STATUS, 1)],
        // Device-writable.
        &[w(HDR, 16), r(DATA, 512), w(STATUS, 1)],
        // Outside guest memory.
        &[r(MEM_END, 16), r(DATA, 512), w(STATUS, 1)],
        &[r(MEM_END - 8, 16), r(DATA, 512), w(STATUS, 1)],
    ];
    for bufs in cases {
        h.header(VIRTIO_BLK_T_OUT, 0);
        let len = h.submit(bufs);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8), "{bufs:?}");
        assert_eq!(h.disk(), disk);
    }
    // No header at all: the chain is only a status descriptor.
    let len = h.submit(&[w(STATUS, 1)]);
    assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(h.stats().errors, 6);
    h.assert_still_works();
}

#[test]
fn chains_without_a_usable_status_byte_come_back_with_length_zero() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let disk = h.disk();
    h.fill(DATA, &[0x22; 512]);
    h.header(VIRTIO_BLK_T_OUT, 0);
    let cases: [&[Buf]; 6] = [
        // Missing: the data is last (and is device-readable).
        &[r(HDR, 16), r(DATA, 512)],
        // Only the header.
        &[r(HDR, 16)],
        // Device-readable status.
        &[r(HDR, 16), r(DATA, 512), r(STATUS, 1)],
        // Zero-length status.
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 0)],
        // Status outside guest memory.
        &[r(HDR, 16), r(DATA, 512), w(MEM_END, 1)],
        &[r(HDR, 16), r(DATA, 512), w(u64::MAX, 1)],
    ];
    for bufs in cases {
        let len = h.submit(bufs);
        assert_eq!(len, 0, "{bufs:?}");
        assert_eq!(h.status(), 0xff, "status written for {bufs:?}");
    }
    // None of these writes was carried out: with no way to report, nothing is done.
    assert_eq!(h.disk(), disk);
    assert_eq!(h.stats().writes, 0);
    assert_eq!(h.stats().errors, 6);
    h.assert_still_works();
}

#[test]
fn descriptor_loops_and_bad_links_come_back_with_length_zero() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 0);
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    // 100 -> 101 -> 102 -> 101 ...
    h.q.store(100, HDR, 16, next, 101);
    h.q.store(101, DATA, 512, next | write, 102);
    h.q.store(102, STATUS, 1, next | write, 101);
    // 110 -> 110 ...
    h.q.store(110, HDR, 16, next, 110);
    // 120 -> 999 (out of the table).
    h.q.store(120, HDR, 16, next, 999);
    for head in [100, 110, 120] {
        h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        h.q.publish(head);
        h.block.process_queue(0);
        assert_eq!(h.q.take_used(), [(u32::from(head), 0)]);
        assert_eq!(h.status(), 0xff);
    }
    // A head index past the queue cannot even be returned; it is skipped.
    h.q.publish(QUEUE_SIZE + 5);
    h.block.process_queue(0);
    assert_eq!(h.q.take_used(), []);
    assert_eq!(h.stats().errors, 4);
    assert_eq!(h.stats().requests, 4);
    h.assert_still_works();
}

#[test]
fn indirect_descriptor_tables() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 12);
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let head = h.q.add_indirect_chain(
        INDIRECT,
        &[r(HDR, 16), w(DATA, 512), w(DATA2, 1024), w(STATUS, 1)],
    );
    h.block.process_queue(0);
    assert_eq!(h.q.take_used(), [(u32::from(head), 1537)]);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.guest(DATA, 512), image_bytes(12 * 512..13 * 512));
    assert_eq!(h.guest(DATA2, 1024), image_bytes(13 * 512..15 * 512));

    // A table whose length is not a whole number of descriptors is a broken chain.
    let head = h.q.write_chain(&[r(INDIRECT, 16 * 4 - 1)]);
    h.q.store(head, INDIRECT, 16 * 4 - 1, VRING_DESC_F_INDIRECT as u16, 0);
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.q.publish(head);
    h.block.process_queue(0);
    assert_eq!(h.q.take_used(), [(u32::from(head), 0)]);
    assert_eq!(h.status(), 0xff);
    h.assert_still_works();
}

#[test]
fn bogus_available_index_does_not_hang_the_device() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let good = h.q.avail_idx();
    h.q.set_avail_idx(good.wrapping_add(QUEUE_SIZE + 10));
    assert!(!h.block.process_queue(0).notified);
    assert_eq!(h.q.take_used(), []);
    h.q.set_avail_idx(good);
    h.assert_still_works();
}

#[test]
fn one_notification_per_batch() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    h.header(VIRTIO_BLK_T_IN, 0);
    for (i, addr) in [DATA, DATA2, DATA3].into_iter().enumerate() {
        h.q.add_chain(&[r(HDR, 16), w(addr, 512), w(STATUS + i as u64, 1)]);
    }
    assert!(h.block.process_queue(0).notified);
    let used = h.q.take_used();
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        [513, 513, 513]
    );
    assert_eq!(h.irq.used(), 1);
    assert_eq!(h.stats().notifications, 1);
    assert_eq!(h.q.used_flags(), 0, "notifications are enabled again");

    // Nothing new: no notification.
    assert!(!h.block.process_queue(0).notified);
    assert_eq!(h.irq.used(), 1);
    // Another queue index: nothing.
    h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert!(!h.block.process_queue(1).notified);
    assert_eq!(h.q.take_used(), []);
    assert!(h.block.process_queue(0).notified);
    assert_eq!(h.q.take_used().len(), 1);
}

#[test]
fn event_idx_suppresses_notifications_until_used_event() {
    let mem = memory();
    let mut h = Harness::with(&mem, disk_image(SECTORS), false, u64::MAX);
    h.header(VIRTIO_BLK_T_IN, 0);
    // The driver wants an interrupt only once the used index passes 2.
    h.q.set_used_event(2);
    for _ in 0..2 {
        h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
        assert!(!h.block.process_queue(0).notified, "used_event not reached");
    }
    assert_eq!(h.irq.used(), 0);
    assert_eq!(h.q.take_used().len(), 2);
    // The device asks to be notified at the next available index.
    assert_eq!(h.q.avail_event(), 2);
    h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    assert!(
        h.block.process_queue(0).notified,
        "used index went from 2 to 3"
    );
    assert_eq!(h.irq.used(), 1);
    assert_eq!(h.q.avail_event(), 3);
}

#[test]
fn activate_checks_queues_and_reset_deactivates() {
    let mem = memory();
    let q = GuestQueue::new(&mem, GuestAddress(0), QUEUE_SIZE);
    let tmp = disk_image(SECTORS);
    let mut block = Block::new(open(&tmp, false), false, None).unwrap();
    let irq: Arc<CountingInterrupt> = Arc::default();

    let err = block
        .activate(mem.clone(), vec![], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            actual: 0
        }
    ));
    let err = block
        .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            actual: 2
        }
    ));
    let mut not_ready = q.queue();
    not_ready.set_ready(false);
    let err = block
        .activate(mem.clone(), vec![not_ready], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady { index: 0 }));
    assert!(!block.is_activated());
    assert!(!block.process_queue(0).notified);

    block
        .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
        .unwrap();
    assert!(block.is_activated());
    let err = block
        .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(err, ActivateError::AlreadyActive));

    block.reset();
    assert!(!block.is_activated());
    assert!(!block.process_queue(0).notified);
    block
        .activate(mem.clone(), vec![q.queue()], 0, irq)
        .unwrap();
    assert!(block.is_activated());
}

#[test]
fn empty_data_requests_succeed_without_io() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    let (len, status) = h.request(VIRTIO_BLK_T_IN, 3, &[]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
    let (len, status) = h.request(VIRTIO_BLK_T_OUT, SECTORS, &[]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
    assert_eq!(h.stats().bytes_read + h.stats().bytes_written, 0);
}

#[test]
fn transfer_all_resumes_after_short_transfers() {
    // Many small buffers: more than IOV_MAX of them, so several calls are needed.
    let tmp = disk_image(8);
    let file = open(&tmp, false);
    let mut bufs = vec![[0u8; 3]; IOV_MAX + 300];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: the iovecs point into `bufs`, which outlives the call.
    unsafe { transfer_all(&file, &mut iovs, 5, false) }.unwrap();
    let flat: Vec<u8> = bufs.iter().flatten().copied().collect();
    assert_eq!(flat, image_bytes(5..5 + flat.len() as u64));

    // Reading past the end of the file is an error, not a hang.
    let mut big = vec![0u8; 8 * 512];
    let mut iov = [libc::iovec {
        iov_base: big.as_mut_ptr().cast(),
        iov_len: big.len(),
    }];
    // SAFETY: the iovec points into `big`, which outlives the call.
    let err = unsafe { transfer_all(&file, &mut iov, 512, false) }.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn a_failed_fdatasync_fails_every_later_flush() {
    let mem = memory();
    let mut h = Harness::new(&mem);
    *h.block.disk.fail_next_sync.lock().unwrap() = Some(std::io::ErrorKind::Other);
    let (_, status) = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    // The file's own fdatasync would succeed now; the failure stands.
    for _ in 0..3 {
        let (_, status) = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(
            status, VIRTIO_BLK_S_IOERR as u8,
            "a flush after a failed one succeeded"
        );
    }
    assert_eq!(h.stats().flushes, 0);
    // Reads still work.
    let (_, status) = h.request(VIRTIO_BLK_T_IN, 0, &[w(DATA, 512)]);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
}
