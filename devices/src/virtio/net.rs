//! The virtio network device (virtio 1.2 §5.1) on a TAP interface.
//!
//! Two queues of [`QUEUE_SIZE`] entries: receive ([`RX_QUEUE`], 0) and transmit ([`TX_QUEUE`],
//! 1); no control queue. With `VIRTIO_F_VERSION_1` every frame in either direction starts with
//! the 12-byte `struct virtio_net_hdr_v1` (§5.1.6), which is also what the [`Tap`] is set up to
//! read and write, so the header travels as it is and checksum and segmentation offloads pass
//! straight through.
//!
//! - Transmit: each chain (device-readable descriptors only) is one header and frame, written
//!   to the backend with one `writev` straight from guest memory. A malformed chain is dropped
//!   and counted; it still goes back to the used ring (with length 0, as every transmit chain).
//! - Receive: frames are read from the backend only while the guest has posted buffers. A frame
//!   goes through the device's own 64 KiB buffer (or straight into the guest's buffer when that
//!   can hold the largest frame), then into one chain or, with `VIRTIO_NET_F_MRG_RXBUF`, as
//!   many as it needs (`num_buffers` in its header, §5.1.6.4). When the guest's buffers run
//!   out the device keeps the frame, stops asking for backend input
//!   ([`VirtioDevice::backend_wanted`]) and goes on once the guest notifies the receive queue.
//!
//! Everything in the queues is untrusted: malformed chains come back with length 0 and are
//! counted ([`NetStats`]); nothing the guest does stops the device or panics the VMM.

mod tap;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    VolatileSlice,
};

pub use tap::{check_name, NetBackend, Tap, TapError, MAX_NAME_LEN, TUN_DEVICE};

use super::queue;
use super::{
    feature_bit, ActivateError, VirtioDevice, VirtioInterrupt, IOV_MAX, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Index of the receive queue (virtio 1.2 §5.1.2).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (virtio 1.2 §5.1.2).
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of `struct virtio_net_hdr_v1` before every frame: with `VIRTIO_F_VERSION_1` it
/// always has `num_buffers`, so 12 bytes (virtio 1.2 §5.1.6).
pub const VNET_HDR_LEN: usize = tap::TAP_VNET_HDR_LEN;
/// The longest frame after the header: a 64 KiB segmentation-offload frame with its Ethernet
/// header and a VLAN tag fits.
pub const MAX_FRAME_LEN: usize = 65550;
/// The longest header and frame in either direction (Firecracker's `MAX_BUFFER_SIZE`).
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// A frame shorter than an Ethernet header (destination, source, type) is not a frame.
const ETH_HLEN: usize = 14;
/// `flags` in `struct virtio_net_hdr_v1` (§5.1.6).
const HDR_FLAGS_OFFSET: usize = 0;
/// `num_buffers` (le16) in `struct virtio_net_hdr_v1` (§5.1.6).
const HDR_NUM_BUFFERS_OFFSET: usize = 10;
/// The most frames one call moves from the backend to the guest; a level-triggered epoll
/// calls again, so transmit gets its turn under a receive flood.
const RX_BATCH: usize = QUEUE_SIZE as usize;
/// Backend read errors in a row after which the backend counts as broken.
const MAX_BACKEND_ERRORS: u32 = 32;
/// `struct virtio_net_config` (§5.1.4) up to `mac`; `status` and later fields read as 0
/// (`VIRTIO_NET_F_STATUS` is not offered: the link is always up).
const CONFIG_LEN: usize = 6;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// The features the device offers (virtio 1.2 §5.1.3, §6).
pub const AVAIL_FEATURES: u64 = feature_bit(VIRTIO_F_VERSION_1)
    | feature_bit(VIRTIO_RING_F_EVENT_IDX)
    | feature_bit(VIRTIO_NET_F_MAC)
    | feature_bit(VIRTIO_NET_F_MRG_RXBUF)
    | feature_bit(VIRTIO_NET_F_CSUM)
    | feature_bit(VIRTIO_NET_F_GUEST_CSUM)
    | feature_bit(VIRTIO_NET_F_GUEST_TSO4)
    | feature_bit(VIRTIO_NET_F_GUEST_TSO6)
    | feature_bit(VIRTIO_NET_F_GUEST_UFO)
    | feature_bit(VIRTIO_NET_F_HOST_TSO4)
    | feature_bit(VIRTIO_NET_F_HOST_TSO6)
    | feature_bit(VIRTIO_NET_F_HOST_UFO);

/// The TAP offloads (`TUNSETOFFLOAD` flags) for the features the driver accepted: what the
/// guest can take in the frames it receives (the `GUEST_*` features, virtio 1.2 §5.1.3).
///
/// The kernel takes segmentation flags only together with `TUN_F_CSUM` and `TUN_F_TSO_ECN`
/// only with a TSO flag (it fails `TUNSETOFFLOAD` otherwise), which is also what the
/// feature dependencies of §5.1.3.1 say; features missing their dependency add nothing.
pub fn tap_offload_flags(acked_features: u64) -> u32 {
    let has = |bit: u32| acked_features & feature_bit(bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex bytes separated by colons.
    #[error(
        "invalid MAC address {0:?}: write six two-digit hex bytes separated by ':', \
         e.g. 52:54:00:12:34:56"
    )]
    Format(String),
    /// The multicast bit (bit 0 of the first byte) is set.
    #[error(
        "MAC address {0} is a multicast address (the lowest bit of its first byte is set); \
         a network card needs a unicast one, e.g. 52:54:00:12:34:56"
    )]
    Multicast(String),
    /// All zero.
    #[error("MAC address 00:00:00:00:00:00 is not a valid address; choose another one")]
    Zero,
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, byte) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case); refuses multicast and all-zero addresses,
/// which no network card may have.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    let format = || MacError::Format(s.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(format)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| format())?;
    }
    if parts.next().is_some() {
        return Err(format());
    }
    if mac[0] & 1 != 0 {
        return Err(MacError::Multicast(format_mac(&mac)));
    }
    if mac == [0; 6] {
        return Err(MacError::Zero);
    }
    Ok(mac)
}

/// A MAC address made from `seed` (e.g. the TAP's name): `02:` (locally administered,
/// unicast) and five bytes of the seed's 64-bit FNV-1a hash, so the same seed gives the same
/// address on every host and every build.
pub fn generated_mac(seed: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = seed.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let [h0, h1, h2, h3, h4, ..] = hash.to_be_bytes();
    [0x02, h0, h1, h2, h3, h4]
}

/// Counters of a [`Net`] device's work, shared with whoever holds [`Net::counters`].
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_bad_chains: AtomicU64,
    rx_errors: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    tx_errors: AtomicU64,
    notifications: AtomicU64,
}

/// A copy of [`NetCounters`] at one moment. Byte counts leave out the 12-byte header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of the frames delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the backend that did not reach the guest: shorter than a header and
    /// an Ethernet header, too big for a receive buffer (without `MRG_RXBUF`), or pending at a
    /// device reset.
    pub rx_dropped: u64,
    /// Receive chains returned unused (length 0) because they were malformed: a
    /// device-readable descriptor, shorter than the header, outside guest memory, broken.
    pub rx_bad_chains: u64,
    /// Failed reads from the backend.
    pub rx_errors: u64,
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes of the frames sent to the backend.
    pub tx_bytes: u64,
    /// Transmit chains dropped because they were malformed: shorter than a header and an
    /// Ethernet header, longer than [`MAX_BUFFER_LEN`], a device-writable descriptor, outside
    /// guest memory, broken.
    pub tx_dropped: u64,
    /// Frames the backend refused.
    pub tx_errors: u64,
    /// Used buffer notifications sent to the guest.
    pub notifications: u64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_bad_chains: get(&self.rx_bad_chains),
            rx_errors: get(&self.rx_errors),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tx_errors: get(&self.tx_errors),
            notifications: get(&self.notifications),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a chain could not be used; the guest sees a used length of 0, the log (debug level)
/// sees this.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("broken descriptor chain (a loop or a bad descriptor)")]
    Broken,
    #[error("a device-writable descriptor in a transmit chain")]
    Writable,
    #[error("a device-readable descriptor in a receive chain")]
    Readable,
    #[error("{0} bytes is too short for a header and an Ethernet header")]
    TooShort(u64),
    #[error("more than {MAX_BUFFER_LEN} bytes")]
    TooLong,
    #[error("{0} bytes of receive buffer is too short for the 12-byte header")]
    NoRoomForHeader(usize),
    #[error("a buffer at {0:#x} is not in guest memory")]
    NotInMemory(u64),
    #[error("a buffer is not in guest memory")]
    Access(#[source] GuestMemoryError),
    #[error("more than {IOV_MAX} pieces")]
    TooManyPieces,
}

/// A usable receive chain: device-writable guest memory, checked to be in guest memory.
#[derive(Debug)]
struct RxChain {
    head: u16,
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

/// The backend and the device's own receive buffer.
struct Host<B> {
    backend: B,
    /// A frame read from the backend before it goes to the guest.
    buf: Box<[u8]>,
    /// Read errors in a row.
    errors: u32,
    /// The backend reached its end or kept failing: no more reads until the next activation.
    failed: bool,
    /// A transmit error was logged at warning level (later ones go to debug).
    tx_error_logged: bool,
    counters: Arc<NetCounters>,
}

impl<B: NetBackend> Host<B> {
    /// A failed read (not `WouldBlock`).
    fn read_error(&mut self, e: &io::Error) {
        NetCounters::add(&self.counters.rx_errors, 1);
        self.errors += 1;
        if self.errors >= MAX_BACKEND_ERRORS {
            error!(
                "virtio-net: {} read errors in a row from the backend, the last: {e}; \
                 receiving stops until the guest resets the device",
                self.errors
            );
            self.failed = true;
        } else if self.errors == 1 {
            warn!("virtio-net: cannot read a frame from the backend: {e}");
        } else {
            debug!("virtio-net: cannot read a frame from the backend: {e}");
        }
    }

    /// The backend said end of file (a socket whose peer is gone).
    fn end_of_file(&mut self) {
        warn!("virtio-net: the backend is closed; receiving stops");
        self.failed = true;
    }
}

/// The queues and what they need, from `DRIVER_OK` to reset.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// `VIRTIO_NET_F_MRG_RXBUF`: a frame may span several receive chains.
    mrg_rxbuf: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM`: otherwise the header's `flags` must be 0 (§5.1.6.4.1).
    guest_csum: bool,
    /// Receive chains taken from the ring for the next frame, in ring order. Taking them (and
    /// not putting them back) moves the ring position past them, so a notification request
    /// asks for *more* buffers than these.
    held: VecDeque<RxChain>,
    /// Length of the frame (header included) waiting in [`Host::buf`].
    pending: Option<usize>,
    /// The guest has no room for the next frame: backend input is not wanted until the
    /// receive queue is notified.
    waiting: bool,
    /// Times in a row the receive ring looked non-empty after enabling notifications but
    /// nothing could be taken from it (a bogus available index).
    rx_empty_rounds: u32,
    rx_added: bool,
    tx_added: bool,
}

impl Active {
    fn add_used(&mut self, queue_index: usize, head: u16, len: u32) {
        let (queue, added) = if queue_index == RX_QUEUE {
            (&mut self.rx, &mut self.rx_added)
        } else {
            (&mut self.tx, &mut self.tx_added)
        };
        match queue.add_used(&self.mem, head, len) {
            Ok(()) => *added = true,
            Err(e) => debug!("virtio-net: cannot return chain {head} of queue {queue_index}: {e}"),
        }
    }

    /// Sends the guest one used buffer notification if a queue that got used buffers asks for
    /// it (§2.7.7, §2.7.10).
    fn notify(&mut self, counters: &NetCounters) -> bool {
        let mut notify = false;
        for (ring, added) in [
            (&mut self.rx, &mut self.rx_added),
            (&mut self.tx, &mut self.tx_added),
        ] {
            if std::mem::take(added) {
                notify |= queue::needs_notification(ring, &self.mem, "virtio-net");
            }
        }
        if !notify {
            return false;
        }
        queue::signal_used_queue(self.interrupt.as_ref(), "virtio-net");
        NetCounters::add(&counters.notifications, 1);
        true
    }

    /// The standard loop ([`queue::process_chains`]) on the transmit queue: every chain goes
    /// to the backend and back to the used ring with length 0 (§5.1.6.2: the device writes
    /// nothing into a transmit buffer).
    fn process_tx<B: NetBackend>(&mut self, host: &mut Host<B>) {
        let mem = &self.mem;
        self.tx_added |= queue::process_chains(&mut self.tx, mem, "virtio-net transmit", |chain| {
            transmit(mem, host, chain);
            0
        });
    }

    /// Takes the next usable receive chain into `held`; malformed chains go straight back with
    /// length 0. Returns `false` when the ring is empty.
    fn take_rx_chain(&mut self, counters: &NetCounters) -> bool {
        while let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) {
            self.rx_empty_rounds = 0;
            let head = chain.head_index();
            match RxChain::parse(&self.mem, chain) {
                Ok(chain) => {
                    self.held.push_back(chain);
                    return true;
                }
                Err(e) => {
                    debug!("virtio-net: receive chain {head} returned unused: {e}");
                    NetCounters::add(&counters.rx_bad_chains, 1);
                    self.add_used(RX_QUEUE, head, 0);
                }
            }
        }
        false
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
    fn process_rx<B: NetBackend>(&mut self, host: &mut Host<B>) {
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
        self.add_used(RX_QUEUE, chain.head, u32::try_from(len).unwrap_or(u32::MAX));
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
            self.add_used(RX_QUEUE, chain.head, written as u32);
            rest = later;
        }
        NetCounters::add(&host.counters.rx_frames, 1);
        NetCounters::add(&host.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
        Delivery::Delivered
    }
}

/// Sends the frame in transmit chain `chain` to the backend, header included, straight from
/// guest memory; a malformed chain is dropped and counted.
fn transmit<B: NetBackend>(
    mem: &GuestMemoryMmap,
    host: &mut Host<B>,
    chain: DescriptorChain<&GuestMemoryMmap>,
) {
    let counters = &host.counters;
    let slices = match tx_slices(mem, chain) {
        Ok(slices) => slices,
        Err(e) => {
            debug!("virtio-net: dropping a transmit chain: {e}");
            NetCounters::add(&counters.tx_dropped, 1);
            return;
        }
    };
    let len: usize = slices.iter().map(VolatileSlice::len).sum();
    match host.backend.write_frame(&slices) {
        Ok(n) if n == len => {
            NetCounters::add(&counters.tx_frames, 1);
            NetCounters::add(&counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
        }
        result => {
            let e = match result {
                Ok(n) => io::Error::other(format!("the backend took {n} of {len} bytes")),
                Err(e) => e,
            };
            if std::mem::replace(&mut host.tx_error_logged, true) {
                debug!("virtio-net: the backend refused a frame: {e}");
            } else {
                warn!("virtio-net: the backend refused a frame (further errors are counted): {e}");
            }
            NetCounters::add(&counters.tx_errors, 1);
        }
    }
}

/// The guest memory of a transmit chain: device-readable, a header and at least an Ethernet
/// header, at most [`MAX_BUFFER_LEN`] bytes, in guest memory.
fn tx_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
) -> Result<Vec<VolatileSlice<'m>>, ChainError> {
    let mut slices = Vec::new();
    let mut total = 0u64;
    let mut complete = false;
    for desc in chain {
        complete = !desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::Writable);
        }
        total += u64::from(desc.len());
        if total > MAX_BUFFER_LEN as u64 {
            return Err(ChainError::TooLong);
        }
        // desc.len() <= MAX_BUFFER_LEN here.
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc.len() as usize) {
            slices.push(slice.map_err(ChainError::Access)?);
        }
        if slices.len() > IOV_MAX {
            return Err(ChainError::TooManyPieces);
        }
    }
    if !complete {
        return Err(ChainError::Broken);
    }
    if total < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(ChainError::TooShort(total));
    }
    Ok(slices)
}

/// A virtio-net device (virtio 1.2 §5.1) on a [`NetBackend`], normally a [`Tap`].
pub struct Net<B: NetBackend> {
    host: Host<B>,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &format_mac(&self.mac))
            .field("backend_fd", &self.host.backend.raw_fd())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: NetBackend> Net<B> {
    /// Creates a network device with MAC address `mac` (see [`parse_mac`], [`generated_mac`])
    /// on `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self {
            host: Host {
                backend,
                buf: vec![0u8; MAX_BUFFER_LEN].into_boxed_slice(),
                errors: 0,
                failed: false,
                tx_error_logged: false,
                counters: Arc::default(),
            },
            mac,
            config: mac,
            active: None,
        }
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.host.backend
    }

    /// The device's counters, live (they keep counting after this call).
    pub fn counters(&self) -> Arc<NetCounters> {
        Arc::clone(&self.host.counters)
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // §5.1.4: `mac` is read-only for a modern driver; nothing else is exposed.
        debug!(
            "virtio-net: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let actual = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount {
                expected: 2,
                actual,
            });
        };
        for (index, queue) in [(RX_QUEUE, &rx), (TX_QUEUE, &tx)] {
            if !queue.ready() {
                return Err(ActivateError::QueueNotReady { index });
            }
        }
        self.host
            .backend
            .set_offload(tap_offload_flags(acked_features))
            .map_err(ActivateError::Backend)?;
        let has = |bit: u32| acked_features & feature_bit(bit) != 0;
        self.host.errors = 0;
        self.host.failed = false;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            held: VecDeque::new(),
            pending: None,
            waiting: false,
            rx_empty_rounds: 0,
            rx_added: false,
            tx_added: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(active) = self.active.take() {
            if active.pending.is_some() {
                NetCounters::add(&self.host.counters.rx_dropped, 1);
            }
        }
        // The next driver may accept fewer offloads; until then the TAP sends plain frames.
        if let Err(e) = self.host.backend.set_offload(0) {
            warn!("virtio-net: cannot turn the backend's offloads off: {e}");
        }
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) -> bool {
        let Self { host, active, .. } = self;
        let Some(active) = active.as_mut() else {
            return false;
        };
        match queue_index {
            RX_QUEUE => active.process_rx(host),
            TX_QUEUE => active.process_tx(host),
            _ => return false,
        }
        active.notify(&host.counters)
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.host.backend.raw_fd()]
    }

    fn process_backend(&mut self, index: usize) {
        let Self { host, active, .. } = self;
        let Some(active) = active.as_mut().filter(|_| index == 0) else {
            return;
        };
        active.process_rx(host);
        active.notify(&host.counters);
    }

    fn backend_wanted(&self, index: usize) -> bool {
        index == 0
            && !self.host.failed
            && self.active.as_ref().is_some_and(|active| !active.waiting)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;

    use virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
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

    /// What the mock backend holds and saw.
    #[derive(Debug, Default)]
    struct MockState {
        /// Frames waiting to be read by the device.
        rx: VecDeque<Vec<u8>>,
        /// The next read fails with this errno.
        rx_error: Option<i32>,
        /// Reads return 0 (end of file) once `rx` is empty.
        eof: bool,
        /// The room the device offered on each read.
        read_capacities: Vec<usize>,
        /// Frames the device wrote.
        tx: Vec<Vec<u8>>,
        /// Writes fail with this errno.
        tx_error: Option<i32>,
        /// Every `set_offload` mask.
        offloads: Vec<u32>,
        /// `set_offload` fails.
        offload_error: bool,
    }

    /// An in-memory backend, shared with the test.
    #[derive(Debug, Clone)]
    struct Mock {
        state: Arc<Mutex<MockState>>,
        fd: Arc<EventFd>,
    }

    impl Mock {
        fn new() -> Self {
            Self {
                state: Arc::default(),
                fd: Arc::new(EventFd::new(0).unwrap()),
            }
        }

        fn state(&self) -> std::sync::MutexGuard<'_, MockState> {
            self.state.lock().unwrap()
        }
    }

    impl NetBackend for Mock {
        fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
            let mut state = self.state();
            if let Some(errno) = state.rx_error.take() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let capacity = bufs.iter().map(VolatileSlice::len).sum();
            let Some(frame) = state.rx.pop_front() else {
                if state.eof {
                    return Ok(0);
                }
                return Err(io::ErrorKind::WouldBlock.into());
            };
            state.read_capacities.push(capacity);
            let mut rest = &frame[..];
            for buf in bufs {
                let n = rest.len().min(buf.len());
                buf.copy_from(&rest[..n]);
                rest = &rest[n..];
            }
            Ok(frame.len() - rest.len())
        }

        fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
            let mut state = self.state();
            if let Some(errno) = state.tx_error {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let mut frame = Vec::new();
            for buf in bufs {
                let mut piece = vec![0u8; buf.len()];
                buf.copy_to(&mut piece);
                frame.extend(piece);
            }
            let n = frame.len();
            state.tx.push(frame);
            Ok(n)
        }

        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            let mut state = self.state();
            if state.offload_error {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            state.offloads.push(flags);
            Ok(())
        }

        fn raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
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

    #[test]
    fn offered_features_and_queues() {
        let net = Net::new(Mock::new(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), [256, 256]);
        let features = net.avail_features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
        ] {
            assert_ne!(features & feature_bit(bit), 0, "feature {bit}");
        }
        assert_eq!(features.count_ones(), 12, "{features:#x}");
        assert_eq!(features & feature_bit(VIRTIO_NET_F_STATUS), 0);
        assert_eq!(net.backend_fds(), [net.backend().raw_fd()]);
        assert!(!net.backend_wanted(0), "not active");
    }

    #[test]
    fn offload_flags_follow_the_accepted_features() {
        use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};
        let f = |bits: &[u32]| bits.iter().map(|&b| feature_bit(b)).sum::<u64>();
        let cases: [(&[u32], u32); 10] = [
            (&[], 0),
            (&[VIRTIO_NET_F_GUEST_CSUM], TUN_F_CSUM),
            (
                &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4],
                TUN_F_CSUM | TUN_F_TSO4,
            ),
            (
                &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6],
                TUN_F_CSUM | TUN_F_TSO6,
            ),
            (
                &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_UFO],
                TUN_F_CSUM | TUN_F_UFO,
            ),
            (
                &[
                    VIRTIO_NET_F_GUEST_CSUM,
                    VIRTIO_NET_F_GUEST_TSO4,
                    VIRTIO_NET_F_GUEST_ECN,
                ],
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN,
            ),
            // ECN without TSO, and segmentation without checksums: nothing (the kernel would
            // refuse them).
            (
                &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN],
                TUN_F_CSUM,
            ),
            (
                &[
                    VIRTIO_NET_F_GUEST_TSO4,
                    VIRTIO_NET_F_GUEST_TSO6,
                    VIRTIO_NET_F_GUEST_UFO,
                ],
                0,
            ),
            // Host-side (transmit) offloads are not the TAP's business.
            (
                &[
                    VIRTIO_NET_F_CSUM,
                    VIRTIO_NET_F_HOST_TSO4,
                    VIRTIO_NET_F_HOST_TSO6,
                    VIRTIO_NET_F_HOST_UFO,
                    VIRTIO_NET_F_MRG_RXBUF,
                ],
                0,
            ),
            (
                &[
                    VIRTIO_NET_F_GUEST_CSUM,
                    VIRTIO_NET_F_GUEST_TSO4,
                    VIRTIO_NET_F_GUEST_TSO6,
                    VIRTIO_NET_F_GUEST_UFO,
                    VIRTIO_NET_F_HOST_TSO4,
                ],
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO,
            ),
        ];
        for (bits, flags) in cases {
            assert_eq!(tap_offload_flags(f(bits)), flags, "{bits:?}");
        }
        assert_eq!(
            tap_offload_flags(AVAIL_FEATURES),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
        );
    }

    #[test]
    fn activation_sets_offloads_and_reset_clears_them() {
        let mem = memory();
        let (mut h, mock) = Harness::new(&mem);
        assert_eq!(
            mock.state().offloads,
            [libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO]
        );
        h.net.reset();
        assert!(!h.net.is_activated());
        assert_eq!(mock.state().offloads.last(), Some(&0));
        h.activate(feature_bit(VIRTIO_F_VERSION_1));
        assert_eq!(mock.state().offloads.last(), Some(&0));
    }

    #[test]
    fn activate_checks_queues_and_the_backend() {
        let mem = memory();
        let q = GuestQueue::new(&mem, GuestAddress(RXQ), QUEUE_SIZE);
        let mock = Mock::new();
        let mut net = Net::new(mock.clone(), [2, 0, 0, 0, 0, 1]);
        let irq: Arc<CountingInterrupt> = Arc::default();
        let err = net
            .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 2,
                actual: 1
            }
        ));
        let mut not_ready = q.queue();
        not_ready.set_ready(false);
        let err = net
            .activate(mem.clone(), vec![q.queue(), not_ready], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueNotReady { index: 1 }));
        mock.state().offload_error = true;
        let err = net
            .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(err, ActivateError::Backend(_)));
        assert!(!net.is_activated());
        assert!(!net.process_queue(RX_QUEUE));
        net.process_backend(0);
        assert!(!net.backend_wanted(0));

        mock.state().offload_error = false;
        net.activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
            .unwrap();
        assert!(net.is_activated() && net.backend_wanted(0));
        assert!(!net.backend_wanted(1), "there is one backend descriptor");
        let err = net
            .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq)
            .unwrap_err();
        assert!(matches!(err, ActivateError::AlreadyActive));
        net.reset();
        assert!(!net.backend_wanted(0));
    }

    #[test]
    fn config_space_holds_the_mac() {
        let mut net = Net::new(Mock::new(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        let read = |net: &Net<Mock>, offset: u64, len: usize| {
            let mut data = vec![0xffu8; len];
            net.read_config(offset, &mut data);
            data
        };
        assert_eq!(read(&net, 0, 6), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(read(&net, 0, 4), [0x52, 0x54, 0x00, 0xab]);
        assert_eq!(read(&net, 4, 4), [0xcd, 0xef, 0, 0]);
        assert_eq!(read(&net, 3, 1), [0xab]);
        // `status` and beyond: 0 (no VIRTIO_NET_F_STATUS).
        assert_eq!(read(&net, 6, 2), [0, 0]);
        assert_eq!(read(&net, 0x100, 8), [0; 8]);
        assert_eq!(read(&net, u64::MAX, 8), [0; 8]);
        net.write_config(0, &[1, 2, 3, 4]);
        assert_eq!(read(&net, 0, 6), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(net.mac(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    }

    #[test]
    fn parse_mac_takes_unicast_addresses_only() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("02:AB:cd:EF:00:ff"),
            Ok([2, 0xab, 0xcd, 0xef, 0, 0xff])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:56:",
            " 52:54:00:12:34:56",
            "525400123456",
        ] {
            assert_eq!(parse_mac(bad), Err(MacError::Format(bad.into())), "{bad:?}");
        }
        assert_eq!(
            parse_mac("01:00:5e:00:00:01"),
            Err(MacError::Multicast("01:00:5e:00:00:01".into()))
        );
        assert!(matches!(
            parse_mac("ff:ff:ff:ff:ff:ff"),
            Err(MacError::Multicast(_))
        ));
        assert_eq!(parse_mac("00:00:00:00:00:00"), Err(MacError::Zero));
        let msg = MacError::Format("x".into()).to_string();
        assert!(msg.contains("52:54:00:12:34:56"), "{msg}");
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xa, 0xbc, 0xff]),
            "52:54:00:0a:bc:ff"
        );
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_addresses() {
        let a = generated_mac("tap0");
        assert_eq!(a, generated_mac("tap0"));
        // The same on every host and build: a change here changes every guest's address.
        assert_eq!(format_mac(&a), "02:d9:63:fc:ef:07");
        let mut seen = std::collections::HashSet::new();
        for seed in ["tap0", "tap1", "tap2", "", "vmm-net-0", "vmm-net-1"] {
            let mac = generated_mac(seed);
            assert_eq!(mac[0] & 0b11, 0b10, "{seed:?}: local, unicast");
            assert_eq!(parse_mac(&format_mac(&mac)), Ok(mac));
            assert!(seen.insert(mac), "{seed:?} collides");
        }
    }

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
            !h.net.process_queue(TX_QUEUE),
            "nothing new: no notification"
        );
        assert!(!h.net.process_queue(2), "no such queue");
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
        assert!(h.net.process_queue(TX_QUEUE));
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
        assert!(!h.net.process_queue(TX_QUEUE), "used_event not passed");
        h.txq.add_chain(&[r(A, 112)]);
        assert!(h.net.process_queue(TX_QUEUE), "used index went from 1 to 2");
        assert_eq!(h.irq.used(), 1);
        assert_eq!(h.txq.avail_event(), 2);
    }

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
        assert!(h.net.process_queue(RX_QUEUE));
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
        assert!(h.net.process_queue(RX_QUEUE));
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
        assert!(!h.net.process_queue(RX_QUEUE));
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
        assert!(!h.net.process_queue(RX_QUEUE));
    }

    /// A `SOCK_SEQPACKET` socket standing in for a TAP (frame boundaries are kept).
    struct SocketBackend(OwnedFd);

    impl NetBackend for SocketBackend {
        fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
            tap::readv(self.0.as_raw_fd(), bufs)
        }
        fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
            tap::writev(self.0.as_raw_fd(), bufs)
        }
        fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    fn seqpacket_pair() -> (SocketBackend, UnixDatagram) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, an array of two c_ints.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0, "{}", io::Error::last_os_error());
        // SAFETY: both descriptors are new and owned by nothing else.
        let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let peer = UnixDatagram::from(peer);
        peer.set_nonblocking(false).unwrap();
        (SocketBackend(ours), peer)
    }

    #[test]
    fn frames_through_a_socket_keep_their_boundaries() {
        let mem = memory();
        let (backend, peer) = seqpacket_pair();
        let mut h = Harness::on(&mem, backend, NO_EVENT_IDX);
        assert_eq!(h.net.backend_fds(), [h.net.backend().raw_fd()]);

        // Transmit: two frames, gathered from several descriptors, arrive one by one.
        let (f, g) = (frame(3000, 23), frame(MAX_FRAME_LEN, 24));
        h.fill(A, &f[..12]);
        h.fill(B, &f[12..]);
        h.fill(BIG, &g);
        h.txq.add_chain(&[r(A, 12), r(B, 3000)]);
        h.txq
            .add_chain(&[r(BIG, 100), r(BIG + 100, g.len() as u32 - 100)]);
        h.net.process_queue(TX_QUEUE);
        let mut buf = vec![0u8; 70_000];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(buf[..n], f[..]);
        let n = peer.recv(&mut buf).unwrap();
        assert!(buf[..n] == g[..]);
        assert_eq!(h.stats().tx_frames, 2);

        // Receive: three frames into mergeable buffers, then the socket is empty.
        let frames = [frame(100, 25), frame(1400, 26), frame(MAX_FRAME_LEN, 27)];
        for f in &frames {
            peer.send(f).unwrap();
        }
        let heads: Vec<u32> = (0..40)
            .map(|i| h.post(&[w(A + i * 0x1000, 2048)]))
            .collect();
        h.net.process_backend(0);
        let used = h.rxq.take_used();
        // 1 buffer, 1 buffer, ceil(65562 / 2048) = 33 buffers.
        assert_eq!(used.len(), 35, "{used:?}");
        assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads[..35]);
        let mut got = Vec::new();
        for (i, &(_, len)) in used.iter().enumerate() {
            got.extend(h.guest(A + i as u64 * 0x1000, len as usize));
        }
        let mut want = as_received(&frames[0], 1, true);
        want.extend(as_received(&frames[1], 1, true));
        want.extend(as_received(&frames[2], 33, true));
        assert!(got == want);
        assert!(h.net.backend_wanted(0), "buffers left, socket empty");
        assert_eq!(h.stats().rx_frames, 3);

        // The peer goes away: end of file, and the descriptor is no longer wanted.
        drop(peer);
        h.net.process_backend(0);
        assert!(!h.net.backend_wanted(0));
    }

    #[test]
    fn real_tap_end_to_end() {
        use std::net::Ipv4Addr;
        use std::time::Duration;

        use tap::netns::{arp_frame, configure, parse_arp, run, wait_readable};

        let Some(()) = run(|| {
            let mem = memory();
            let tap = Tap::open("vmmnet%d").unwrap();
            let name = tap.name().to_owned();
            // Activation sets every offload the guest accepted: the kernel must take them.
            let mut h = Harness::on(&mem, tap, NO_EVENT_IDX);
            let (host_ip, guest_ip) = (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15));
            configure(&name, host_ip);
            let guest_mac = h.net.mac();

            // The guest asks who has the host's address...
            let mut request = vec![0u8; VNET_HDR_LEN];
            request.extend(arp_frame(
                1, [0xff; 6], guest_mac, guest_ip, [0; 6], host_ip,
            ));
            h.fill(A, &request);
            h.send(&[r(A, 12), r(A + 12, request.len() as u32 - 12)]);
            assert_eq!((h.stats().tx_frames, h.stats().tx_errors), (1, 0));

            // ...and the kernel's answer lands in the guest's buffers.
            let heads: Vec<u32> = (0..32)
                .map(|i| h.post(&[w(B + i * 0x1000, 1526)]))
                .collect();
            let fd = h.net.backend_fds()[0];
            for _ in 0..50 {
                assert!(wait_readable(fd, Duration::from_secs(5)), "no answer");
                h.net.process_backend(0);
                for (head, len) in h.rxq.take_used() {
                    let i = heads.iter().position(|&x| x == head).unwrap() as u64;
                    let got = h.guest(B + i * 0x1000, len as usize);
                    assert_eq!(got[10..12], [1, 0], "num_buffers");
                    let eth = &got[VNET_HDR_LEN..];
                    if let Some((2, sender_mac, sender_ip, target_ip)) = parse_arp(eth) {
                        assert_eq!((sender_ip, target_ip), (host_ip, guest_ip));
                        assert_eq!(eth[..6], guest_mac);
                        assert_eq!(eth[6..12], sender_mac);
                        return;
                    }
                }
            }
            panic!("no ARP reply came");
        }) else {
            return;
        };
    }
}
