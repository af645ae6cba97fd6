//! The driver side of a split virtqueue, for unit tests.
//!
//! Built from virtio-queue's mock pieces (`DescriptorTable`, `AvailRing`, `UsedRing`), but
//! laid out by hand: `MockSplitQueue::create` places the used ring right after the first
//! `len` *bytes* of the available ring, so the two overlap once more than `len / 2` buffers
//! have been offered.

pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::VirtioInterrupt;

/// One buffer of a chain: guest address, length, and whether the device writes it.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A device-readable buffer.
pub fn r(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

/// A device-writable buffer.
pub fn w(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// A split virtqueue as the driver sees it.
pub struct GuestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    desc_table: DescriptorTable<'a, GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    desc_addr: GuestAddress,
    avail_addr: GuestAddress,
    used_addr: GuestAddress,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> GuestQueue<'a> {
    /// A queue of `size` entries: descriptor table at `base` (16-byte aligned), available ring
    /// right after it, used ring 4 KiB further. Needs `16 * size + 0x1000 + 6 + 8 * size` bytes.
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let desc_addr = base;
        let avail_addr = base.unchecked_add(16 * u64::from(size));
        let used_addr = avail_addr.unchecked_add(0x1000);
        Self {
            mem,
            size,
            desc_table: DescriptorTable::new(mem, desc_addr, size),
            avail: AvailRing::new(mem, avail_addr, size),
            used: UsedRing::new(mem, used_addr, size),
            desc_addr,
            avail_addr,
            used_addr,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// A ready device-side [`Queue`] on this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(self.desc_addr).unwrap();
        q.try_set_avail_ring_address(self.avail_addr).unwrap();
        q.try_set_used_ring_address(self.used_addr).unwrap();
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` as given (no linking).
    pub fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_table
            .store(
                index,
                RawDescriptor::from(Descriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Writes `bufs` as a linked chain in the next free descriptors and offers it; returns the
    /// head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.write_chain(bufs);
        self.publish(head);
        head
    }

    /// Writes `bufs` as a linked chain in the next free descriptors without offering it.
    pub fn write_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let mut flags = if buf.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store(index, buf.addr, buf.len, flags, next);
            self.next_desc = next;
        }
        head
    }

    /// Writes `bufs` as an indirect table at `table` and offers a chain of one descriptor
    /// pointing to it; returns the head index.
    pub fn add_indirect_chain(&mut self, table: u64, bufs: &[Buf]) -> u16 {
        let table_mem = DescriptorTable::new(self.mem, GuestAddress(table), bufs.len() as u16);
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            table_mem
                .store(
                    i as u16,
                    RawDescriptor::from(Descriptor::new(buf.addr, buf.len, flags, i as u16 + 1)),
                )
                .unwrap();
        }
        let head = self.next_desc;
        self.store(
            head,
            table,
            16 * bufs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.next_desc = (head + 1) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let idx = self.avail.idx().load();
        self.avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        self.avail.idx().store(idx.wrapping_add(1));
    }

    /// The available ring's `idx`.
    pub fn avail_idx(&self) -> u16 {
        self.avail.idx().load()
    }

    /// Overwrites the available ring's `idx` (for hostile tests).
    pub fn set_avail_idx(&self, idx: u16) {
        self.avail.idx().store(idx);
    }

    /// The used entries `(id, len)` added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used.idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = self
                .used
                .ring()
                .ref_at(usize::from(self.used_seen % self.size))
                .unwrap()
                .load();
            out.push((elem.id(), elem.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// The used ring's `flags` (bit 0: `VRING_USED_F_NO_NOTIFY`).
    pub fn used_flags(&self) -> u16 {
        self.mem.read_obj(self.used_addr).unwrap()
    }

    /// Sets `used_event` (the driver's side of `VIRTIO_RING_F_EVENT_IDX`, §2.7.10).
    pub fn set_used_event(&self, idx: u16) {
        let addr = self.avail_addr.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(idx, addr).unwrap();
    }

    /// The device's `avail_event` (§2.7.10).
    pub fn avail_event(&self) -> u16 {
        let addr = self.used_addr.unchecked_add(4 + 8 * u64::from(self.size));
        self.mem.read_obj(addr).unwrap()
    }
}

/// A [`VirtioInterrupt`] that counts notifications.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    pub used: AtomicU32,
    pub config: AtomicU32,
}

impl CountingInterrupt {
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
