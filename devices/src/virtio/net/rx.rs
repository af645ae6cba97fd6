//! The receive path: frames from the backend into the guest's receive buffers (virtio 1.2
//! §5.1.6.3, §5.1.6.4).

use std::io;

use log::debug;
use virtio_queue::{DescriptorChain, QueueState, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    VolatileSlice,
};

use super::{
    Active, ChainError, Host, NetBackend, NetCounters, ETH_HLEN, HDR_FLAGS_OFFSET,
    HDR_NUM_BUFFERS_OFFSET, IOV_MAX, MAX_BUFFER_LEN, RX_BATCH, VNET_HDR_LEN,
};

/// A usable receive chain: device-writable guest memory, checked to be in guest memory.
#[derive(Debug)]
pub(super) struct RxChain {
    head: u16,
    /// Its position in the available ring (the queue's `next_avail` before it was taken).
    ring_pos: u16,
    /// The buffers, in order; zero-length ones left out, and none past the first
    /// [`MAX_BUFFER_LEN`] bytes (no frame needs more).
    bufs: Vec<(GuestAddress, usize)>,
    /// Total length of `bufs`.
    capacity: usize,
}

impl RxChain {
    /// Checks the device-writable chain `chain` (virtio 1.2 §5.1.6.3: the driver posts
    /// device-writable buffers of at least the header's size).
    fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        ring_pos: u16,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut bufs = Vec::new();
        let mut capacity = 0usize;
        let mut complete = false;
        // virtio-queue ends a chain after as many descriptors as the queue (or the indirect
        // table) holds, at a descriptor it cannot read, or past 4 GiB in all: the last
        // descriptor then still says NEXT.
        for desc in chain {
            complete = !desc.has_next();
            if !desc.is_write_only() {
                return Err(ChainError::Readable);
            }
            // A u32 fits a usize on the 64-bit hosts KVM runs on.
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err(ChainError::NotInMemory(desc.addr().0));
            }
            if capacity < MAX_BUFFER_LEN {
                bufs.push((desc.addr(), len));
                capacity += len;
            }
        }
        if !complete {
            return Err(ChainError::Broken);
        }
        if capacity < VNET_HDR_LEN {
            return Err(ChainError::NoRoomForHeader(capacity));
        }
        Ok(Self {
            head,
            ring_pos,
            bufs,
            capacity,
        })
    }

    /// The guest memory of the chain, one slice per contiguous host range.
    fn slices<'m>(&self, mem: &'m GuestMemoryMmap) -> Result<Vec<VolatileSlice<'m>>, ChainError> {
        let mut slices = Vec::with_capacity(self.bufs.len());
        for &(addr, len) in &self.bufs {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
                slices.push(slice.map_err(ChainError::Access)?);
            }
        }
        Ok(slices)
    }

    /// Writes `data` at byte `offset` of the chain; returns the bytes written (all of `data`
    /// that fits).
    fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        mut offset: usize,
        mut data: &[u8],
    ) -> Result<usize, GuestMemoryError> {
        let mut written = 0;
        for &(addr, len) in &self.bufs {
            if data.is_empty() {
                break;
            }
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = data.len().min(len - offset);
            let (now, rest) = data.split_at(n);
            // `offset < len`, and the buffer is in guest memory: no overflow.
            mem.write_slice(now, addr.unchecked_add(offset as u64))?;
            written += n;
            data = rest;
            offset = 0;
        }
        Ok(written)
    }
}

/// What happened to the frame waiting in the device's buffer.
enum Delivery {
    /// It is in the guest's buffers.
    Delivered,
    /// It was dropped (counted).
    Dropped,
    /// The guest has not posted enough buffers: it stays.
    NoRoom,
}

impl Active {
    /// Returns receive chain `head` to the used ring with `len` bytes written.
    fn add_used_rx(&mut self, head: u16, len: u32) {
        match self.rx.add_used(&self.mem, head, len) {
            Ok(()) => self.rx_added = true,
            Err(e) => debug!("virtio-net: cannot return receive chain {head}: {e}"),
        }
    }

    /// Takes the next usable receive chain into `held`; malformed chains go straight back with
    /// length 0. Returns `false` when the ring is empty.
    fn take_rx_chain(&mut self, counters: &NetCounters) -> bool {
        loop {
            let ring_pos = self.rx.next_avail();
            let Some(chain) =
                crate::virtio::queue::pop_chain(&mut self.rx, &self.mem, "virtio-net")
            else {
                return false;
            };
            self.rx_empty_rounds = 0;
            let head = chain.head_index();
            match RxChain::parse(&self.mem, chain, ring_pos) {
                Ok(chain) => {
                    self.held.push_back(chain);
                    return true;
                }
                Err(e) => {
                    debug!("virtio-net: receive chain {head} returned unused: {e}");
                    NetCounters::add(&counters.rx_bad_chains, 1);
                    self.add_used_rx(head, 0);
                }
            }
        }
    }

    /// The receive queue's state for a snapshot, which leaves out any frame waiting for room:
    /// the chains held (taken from the ring, not returned yet) count as not taken, so that a
    /// restored device takes them again. Only when they are the last chains taken: had a
    /// malformed chain (already returned) come between them, taking it again would return it
    /// twice, so then they stay taken.
    pub(super) fn rx_state(&self) -> QueueState {
        let mut state = self.rx.state();
        if let Some(first) = self.held.front() {
            let taken_since = state.next_avail.wrapping_sub(first.ring_pos);
            if usize::from(taken_since) == self.held.len() {
                state.next_avail = first.ring_pos;
            }
        }
        state
    }

    /// The receive ring is empty: asks the guest to notify when it adds buffers and looks
    /// again, so that buffers added meanwhile are not missed (§2.7.10). `true`: there are
    /// buffers after all, go on. `false`: wait for the notification (`waiting` is set).
    fn more_rx_buffers(&mut self) -> bool {
        self.rx_empty_rounds += 1;
        match self.rx.enable_notification(&self.mem) {
            // Twice in a row with nothing taken: the available index is bogus; wait for the
            // guest to notify again instead of spinning.
            Ok(true) if self.rx_empty_rounds < 2 => {
                if let Err(e) = self.rx.disable_notification(&self.mem) {
                    debug!("virtio-net: cannot disable receive notifications: {e}");
                }
                true
            }
            Ok(_) => {
                self.waiting = true;
                false
            }
            Err(e) => {
                debug!("virtio-net: cannot enable receive notifications: {e}");
                self.waiting = true;
                false
            }
        }
    }

    /// Moves frames from the backend to the guest: first the frame the device holds, then new
    /// ones, until the backend has none, the guest has no room, or [`RX_BATCH`] frames went by.
    /// It never returns holding a frame with `waiting` unset: nothing would come back for it.
    pub(super) fn process_rx<B: NetBackend>(&mut self, host: &mut Host<B>) {
        self.waiting = false;
        if let Err(e) = self.rx.disable_notification(&self.mem) {
            debug!("virtio-net: cannot disable receive notifications: {e}");
        }
        self.rx_empty_rounds = 0;
        let mut reads = 0;
        loop {
            if let Some(len) = self.pending {
                match self.deliver(host, len) {
                    Delivery::Delivered | Delivery::Dropped => self.pending = None,
                    Delivery::NoRoom if self.more_rx_buffers() => continue,
                    Delivery::NoRoom => break,
                }
            }
            if reads >= RX_BATCH || host.failed {
                break;
            }
            if self.held.is_empty() && !self.take_rx_chain(&host.counters) {
                if self.more_rx_buffers() {
                    continue;
                }
                // Nowhere to put a frame: leave it in the backend.
                break;
            }
            reads += 1;
            match self.read_frame(host) {
                Ok(()) => host.errors = 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => host.read_error(&e),
            }
        }
    }

    /// Reads one frame: straight into the first held chain when it can hold the largest
    /// frame (and delivers it), otherwise into the device's buffer (`pending`).
    fn read_frame<B: NetBackend>(&mut self, host: &mut Host<B>) -> io::Result<()> {
        let direct = match self.held.front() {
            Some(chain) if chain.capacity >= MAX_BUFFER_LEN => {
                chain.slices(&self.mem).ok().filter(|s| s.len() <= IOV_MAX)
            }
            _ => None,
        };
        let len = match &direct {
            Some(slices) => host.backend.read_frame(slices)?,
            None => host
                .backend
                .read_frame(&[VolatileSlice::from(&mut host.buf[..])])?,
        };
        if len == 0 {
            host.end_of_file();
            return Ok(());
        }
        if len < VNET_HDR_LEN + ETH_HLEN {
            // A held chain that got the bytes stays held for the next frame.
            debug!("virtio-net: dropping a {len}-byte frame from the backend");
            NetCounters::add(&host.counters.rx_dropped, 1);
            return Ok(());
        }
        if direct.is_none() {
            self.pending = Some(len);
            return Ok(());
        }
        drop(direct);
        let Some(chain) = self.held.pop_front() else {
            return Ok(());
        };
        // The frame is in place; fix its header: the TAP leaves `num_buffers` alone (it is not
        // part of `struct virtio_net_hdr`), and `flags` must be 0 without GUEST_CSUM.
        let num_buffers = 1u16.to_le_bytes();
        let mut fixes: &[(usize, &[u8])] = &[
            (HDR_NUM_BUFFERS_OFFSET, &num_buffers),
            (HDR_FLAGS_OFFSET, &[0]),
        ];
        if self.guest_csum {
            fixes = &fixes[..1];
        }
        for &(offset, bytes) in fixes {
            if let Err(e) = chain.write_at(&self.mem, offset, bytes) {
                debug!("virtio-net: cannot write the receive header: {e}");
            }
        }
        // len <= the chain's capacity, at most 4 GiB (virtio-queue stops a chain there).
        self.add_used_rx(chain.head, u32::try_from(len).unwrap_or(u32::MAX));
        NetCounters::add(&host.counters.rx_frames, 1);
        NetCounters::add(&host.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Ok(())
    }

    /// Copies the `len`-byte frame in the device's buffer into as many held chains as it
    /// needs (one without `MRG_RXBUF`), taking more from the ring when needed.
    fn deliver<B: NetBackend>(&mut self, host: &mut Host<B>, len: usize) -> Delivery {
        let Some(frame) = host.buf.get_mut(..len) else {
            return Delivery::Dropped;
        };
        // How many chains the frame takes.
        let mut count = 0;
        let mut room = 0;
        for chain in &self.held {
            if room >= len || (!self.mrg_rxbuf && count == 1) {
                break;
            }
            room += chain.capacity;
            count += 1;
        }
        while room < len && (self.mrg_rxbuf || count == 0) {
            if !self.take_rx_chain(&host.counters) {
                return Delivery::NoRoom;
            }
            room += self.held.back().map_or(0, |c| c.capacity);
            count += 1;
        }
        if room < len {
            // Without MRG_RXBUF the frame must fit one buffer (§5.1.6.3.1); the chain stays
            // held for the next frame.
            debug!("virtio-net: dropping a {len}-byte frame: the receive buffer holds {room}");
            NetCounters::add(&host.counters.rx_dropped, 1);
            return Delivery::Dropped;
        }
        // At most QUEUE_SIZE chains are held, so the count fits num_buffers' 16 bits.
        let num_buffers = u16::try_from(count).unwrap_or(u16::MAX);
        if let Some(field) = frame.get_mut(HDR_NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
            field.copy_from_slice(&num_buffers.to_le_bytes());
        }
        if !self.guest_csum {
            if let Some(flags) = frame.get_mut(HDR_FLAGS_OFFSET) {
                *flags = 0;
            }
        }
        let mut rest: &[u8] = frame;
        for _ in 0..count {
            let Some(chain) = self.held.pop_front() else {
                break;
            };
            let n = rest.len().min(chain.capacity);
            let (now, later) = rest.split_at(n);
            let written = chain.write_at(&self.mem, 0, now).unwrap_or_else(|e| {
                // Cannot happen: the chain's buffers were checked to be in guest memory.
                debug!("virtio-net: cannot write a receive buffer: {e}");
                0
            });
            // written <= MAX_BUFFER_LEN.
            self.add_used_rx(chain.head, written as u32);
            rest = later;
        }
        NetCounters::add(&host.counters.rx_frames, 1);
        NetCounters::add(&host.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Delivery::Delivered
    }
}
