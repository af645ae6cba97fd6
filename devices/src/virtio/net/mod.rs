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
//!
//! A snapshot ([`VirtioDevice::queue_states`]) holds the queues' ring positions only. A frame
//! already read from the backend but not yet delivered to the guest is not part of it: a
//! restored device has dropped that frame, as a network may. The receive chains held for it
//! count as not taken, so the restored device takes them again and the guest loses no
//! buffers (unless a malformed chain came between them; then they stay taken).
//!
//! Here: the [`Net`] device, its features and configuration space. The receive path is in
//! `rx.rs`, the transmit path in `tx.rs`, MAC addresses in `mac.rs`, the counters in
//! `counters.rs` and the host side ([`NetBackend`], [`Tap`]) in `tap.rs`.

mod counters;
mod mac;
mod rx;
pub(crate) mod tap;
#[cfg(test)]
mod tests;
mod tx;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{Queue, QueueState};
use vm_memory::{GuestMemoryError, GuestMemoryMmap};

pub use counters::{NetCounters, NetStats};
pub use mac::{format_mac, generated_mac, parse_mac, MacError};
pub use tap::{check_name, NetBackend, Tap, TapError, MAX_NAME_LEN, TUN_DEVICE};

use super::queue;
use super::{
    feature_bit, ActivateError, QueueRun, VirtioDevice, VirtioInterrupt, IOV_MAX,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use rx::RxChain;

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
    #[cfg(test)]
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    #[cfg(test)]
    pub(crate) fn backend(&self) -> &B {
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
        let [rx, tx] = super::ready_queues(queues)?;
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

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|active| vec![active.rx_state(), active.tx.state()])
            .unwrap_or_default()
    }

    fn process_queue(&mut self, queue_index: usize) -> QueueRun {
        let Self { host, active, .. } = self;
        let Some(active) = active.as_mut() else {
            return QueueRun::default();
        };
        // Receiving is bounded by its own batch, and the TAP brings it back.
        let more = match queue_index {
            RX_QUEUE => {
                active.process_rx(host);
                false
            }
            TX_QUEUE => active.process_tx(host),
            _ => return QueueRun::default(),
        };
        QueueRun {
            notified: active.notify(&host.counters),
            more,
        }
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
