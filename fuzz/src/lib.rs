//! What the fuzz targets share: guest memory fenced by guard pages, a reader that turns the
//! fuzzer's bytes into values, the devices on in-memory backends, and the driver's side of the
//! virtio-mmio start-up.
//!
//! Guest memory here is mapped with an inaccessible page on each side of every region, so a
//! device or loader that touches host memory just outside the guest's crashes the target at
//! once (SIGSEGV), which libFuzzer reports like any other crash; AddressSanitizer covers the
//! VMM's own heap.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{regs, MmioTransport};
use devices::virtio::net::NetBackend;
use devices::virtio::{EventFdInterrupt, VirtioDevice};
use devices::BusDevice;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vm_memory::{GuestRegionMmap, MmapRegion, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

const PAGE: usize = 4096;

/// Guest memory of `ranges` (guest address, size: both page multiples, sorted, disjoint), each
/// region between two inaccessible guard pages. The mappings live as long as the process: a
/// target builds its memory once and reuses it (see [`fill`]).
pub fn guarded_memory(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
    let regions = ranges
        .iter()
        .map(|&(addr, size)| {
            assert!(size % PAGE == 0 && addr % PAGE as u64 == 0);
            // SAFETY: a fresh anonymous mapping, no address hint; the result is checked.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size + 2 * PAGE,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED, "cannot map fuzz guest memory");
            // SAFETY: the pages after the first guard page are inside the mapping just made.
            let inner = unsafe { base.cast::<u8>().add(PAGE) };
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: `inner..inner + size` lies inside the mapping; the guard pages around it
            // stay PROT_NONE.
            let rc = unsafe { libc::mprotect(inner.cast(), size, prot) };
            assert_eq!(rc, 0, "cannot open fuzz guest memory");
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            // SAFETY: `inner` and `size` describe readable, writable memory of a mapping that is
            // never unmapped, with these protection bits and flags.
            let region = unsafe { MmapRegion::build_raw(inner, size, prot, flags) }
                .expect("cannot describe fuzz guest memory");
            GuestRegionMmap::new(region, GuestAddress(addr)).expect("guest region overflows")
        })
        .collect();
    GuestMemoryMmap::from_regions(regions).expect("cannot build fuzz guest memory")
}

/// Zeroes every region of `mem`, then copies `data` over the regions in address order (as
/// much as fits).
pub fn fill(mem: &GuestMemoryMmap, mut data: &[u8]) {
    for region in mem.iter() {
        let len = region.len() as usize;
        let n = data.len().min(len);
        let start = region.start_addr();
        let zeros = vec![0u8; len - n];
        mem.write_slice(&data[..n], start).expect("region write");
        mem.write_slice(&zeros, start.unchecked_add(n as u64))
            .expect("region write");
        data = &data[n..];
    }
}

/// The fuzzer's bytes as values, read front to back; once they run out every value is 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next `n` bytes, or fewer at the end.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn le(&mut self, n: usize) -> u64 {
        let mut buf = [0u8; 8];
        let bytes = self.bytes(n);
        buf[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(buf)
    }

    pub fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }

    pub fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }

    pub fn u64(&mut self) -> u64 {
        self.le(8)
    }
}

/// A file in memory (`memfd_create`) holding `data`.
pub fn memfd(name: &str, data: &[u8]) -> File {
    let file = empty_memfd(name);
    io::Write::write_all(&mut &file, data).expect("memfd write");
    file
}

/// An empty file in memory.
pub fn empty_memfd(name: &str) -> File {
    let name = std::ffi::CString::new(name).expect("memfd name");
    // SAFETY: a NUL-terminated name and no flags; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { File::from_raw_fd(fd) }
}

/// A virtio-blk device on a disk of `sectors` 512-byte sectors in memory.
pub fn block_device(sectors: u64, read_only: bool) -> devices::virtio::block::Block {
    let file = empty_memfd("fuzz-disk");
    file.set_len(sectors * 512).expect("disk size");
    devices::virtio::block::Block::new(file, read_only, Some("fuzz".into())).expect("block device")
}

/// A network backend that hands the device the frames queued in it (the fuzzer's) and takes
/// every frame the device sends, reading each byte of it. Clones share the queue.
#[derive(Clone)]
pub struct FrameQueue {
    rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    fd: Arc<EventFd>,
}

impl FrameQueue {
    pub fn new() -> Self {
        Self {
            rx: Arc::default(),
            fd: Arc::new(EventFd::new(0).expect("eventfd")),
        }
    }

    /// Queues `frame` for the device to receive.
    pub fn push(&self, frame: &[u8]) {
        self.rx
            .lock()
            .expect("frame queue")
            .push_back(frame.to_vec());
    }
}

impl Default for FrameQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl NetBackend for FrameQueue {
    fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        let Some(frame) = self.rx.lock().expect("frame queue").pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut rest = &frame[..];
        for buf in bufs {
            let n = rest.len().min(buf.len());
            buf.copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(frame.len() - rest.len())
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        let mut total = 0;
        let mut scratch = [0u8; 256];
        for buf in bufs {
            // Reads every byte, so an out-of-guest slice would fault here.
            let mut offset = 0;
            while offset < buf.len() {
                let n = (buf.len() - offset).min(scratch.len());
                buf.subslice(offset, n)
                    .expect("slice within itself")
                    .copy_to(&mut scratch[..n]);
                offset += n;
            }
            total += buf.len();
        }
        Ok(total)
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A transport for `device` on `mem`; the device is returned too, for the caller to run its
/// queues as the VMM's event loop would.
pub fn transport<D: VirtioDevice + 'static>(
    mem: &GuestMemoryMmap,
    device: D,
) -> (MmioTransport, Arc<Mutex<dyn VirtioDevice>>) {
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(device));
    let interrupt = Arc::new(EventFdInterrupt::new(EventFd::new(0).expect("eventfd")));
    let transport =
        MmioTransport::new(mem.clone(), device.clone(), interrupt).expect("mmio transport");
    (transport, device)
}

/// Writes the 32-bit register at `offset`.
pub fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(0xd000_0000, offset, &value.to_le_bytes());
}

/// Reads the 32-bit register at `offset`.
pub fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(0xd000_0000, offset, &mut data);
    u32::from_le_bytes(data)
}

/// One queue as the driver programs it.
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup {
    pub size: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// The driver's start-up (virtio 1.2 §3.1.1): ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK,
/// the queues, DRIVER_OK. Returns whether the device runs (the transport may refuse any step
/// for the values given).
pub fn start(t: &mut MmioTransport, features: u64, queues: &[QueueSetup]) -> bool {
    use virtio_bindings::virtio_config::*;
    let driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write32(t, regs::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(t, regs::STATUS, driver);
    for (select, half) in [(1, features >> 32), (0, features)] {
        write32(t, regs::DRIVER_FEATURES_SEL, select);
        write32(t, regs::DRIVER_FEATURES, half as u32);
    }
    write32(t, regs::STATUS, driver | VIRTIO_CONFIG_S_FEATURES_OK);
    for (index, q) in queues.iter().enumerate() {
        write32(t, regs::QUEUE_SEL, index as u32);
        write32(t, regs::QUEUE_NUM, q.size);
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, q.desc),
            (regs::QUEUE_DRIVER_LOW, q.avail),
            (regs::QUEUE_DEVICE_LOW, q.used),
        ] {
            write32(t, low, addr as u32);
            write32(t, low + 4, (addr >> 32) as u32);
        }
        write32(t, regs::QUEUE_READY, 1);
    }
    let ok = driver | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
    write32(t, regs::STATUS, ok);
    read32(t, regs::STATUS) == ok
}

/// A queue of `max` entries at most, placed by the fuzzer: mostly in the first `span` bytes
/// of guest memory (where the fuzzer's bytes land, see [`fill`]) with each ring aligned as the
/// split ring requires, so that the device starts and the fuzzer's bytes become the rings and
/// chains; anywhere at all (unaligned, outside memory) when the input asks.
pub fn queue_from(input: &mut Input, max: u16, span: u64) -> QueueSetup {
    let shift = u32::from(input.u8()) % (max.trailing_zeros() + 1);
    let mut place = |align: u64| {
        let raw = input.u16();
        if raw == u16::MAX {
            input.u64()
        } else {
            (u64::from(raw) % span) & !(align - 1)
        }
    };
    QueueSetup {
        size: 1 << shift,
        desc: place(16),
        avail: place(2),
        used: place(4),
    }
}

/// Runs queue `index` as the event loop does when its notification eventfd fires, and again
/// while a run stops at its budget (a few times at most: the fuzzer's rings are small).
pub fn notify(device: &Arc<Mutex<dyn VirtioDevice>>, index: usize) {
    for _ in 0..8 {
        let run = device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .process_queue(index);
        if !run.more {
            break;
        }
    }
}
