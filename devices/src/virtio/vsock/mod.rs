//! The socket device, virtio-vsock (virtio 1.2 §5.10, device ID 19): stream sockets between the
//! guest and programs on the host, with Firecracker's host-side convention, implemented here
//! (no `/dev/vhost-vsock`, so it works for unprivileged users and in nested VMs).
//!
//! - Host → guest: a host program connects to the Unix socket `PATH` (`--vsock cid=N,uds=PATH`)
//!   and writes `CONNECT <port>\n`; once the guest's listener on that port accepted, the device
//!   answers `OK <host-side port>\n` and the connection carries the stream. Nothing listening
//!   in the guest (or no answer within [`muxer::CONNECT_TIMEOUT`]): the host connection is
//!   closed.
//! - Guest → host: a guest connection to CID 2, port P is forwarded to the Unix socket
//!   `PATH_P`, which a host program listens on; refused (`RST`) when none does.
//!
//! Three queues: receive ([`RX_QUEUE`]: packets to the guest), transmit ([`TX_QUEUE`]: packets
//! from it) and event ([`EVENT_QUEUE`]: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` after a restore).
//! The packet format comes from rust-vmm's `virtio-vsock` crate; the host side (a Unix
//! listener, one Unix stream per connection, their credit and their state) is the
//! [`muxer::Muxer`], whose epoll descriptor is the device's one backend descriptor
//! ([`VirtioDevice::backend_fds`]), so the VMM's event loop serves every connection.
//!
//! Flow control is the spec's (§5.10.6.3): each side tells the other how much it may send
//! (`buf_alloc`, `fwd_cnt`). Host → guest the device reads a host socket only while the guest
//! has credit, straight into the guest's receive buffer, so nothing is buffered in vmm. Guest →
//! host it writes straight from guest memory to the host socket, and keeps what the socket does
//! not take, at most [`CONN_BUF_ALLOC`] bytes per connection: the credit it gives the guest. A
//! guest that sends past its credit has its connection reset. So vmm holds at most
//! [`CONN_BUF_ALLOC`] × [`MAX_CONNECTIONS`] bytes for slow host readers, whatever the guest does.
//!
//! Everything the guest sends is hostile: a malformed chain comes back with length 0, a packet
//! for no connection or with an unknown operation is answered with `RST`, replies to a flood of
//! requests are bounded ([`muxer::MAX_PENDING_RESETS`]), and the number of connections too.
//!
//! Snapshot: the queues' positions. Connections are not saved (their host sockets cannot be):
//! a restored device sends the guest `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, as Firecracker does,
//! and the guest drops its connections and may make new ones.

mod connection;
pub mod muxer;
#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use log::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueState, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::queue;
use super::{
    feature_bit, read_config_bytes, ActivateError, QueueRun, VirtioDevice, VirtioInterrupt,
    CHAINS_PER_RUN, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use muxer::Muxer;

/// Index of the receive queue (virtio 1.2 §5.10.2).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// The host's CID (virtio 1.2 §5.10.4: 2 is the host).
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The highest: Linux's `struct sockaddr_vm` holds 32 bits, and `U32_MAX` is `VMADDR_CID_ANY`.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// The credit each connection gives the guest (`buf_alloc`): the most bytes vmm holds for a
/// host program that reads slower than the guest writes (the default of Linux's own sockets).
pub const CONN_BUF_ALLOC: u32 = 256 << 10;
/// The most connections at once, both directions together; more are refused with `RST`.
pub const MAX_CONNECTIONS: usize = 4096;
/// The most data bytes in one packet, either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: u32 = 64 << 10;

/// `type` of a stream socket packet (§5.10.6).
pub const TYPE_STREAM: u16 = 1;
/// Packet operations (§5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
/// `SHUTDOWN` flags: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flags: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// The event the device sends after a restore (§5.10.6.7).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The features the device offers.
pub const AVAIL_FEATURES: u64 =
    feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_RING_F_EVENT_IDX);

/// How the device names itself in log messages.
const LOG_NAME: &str = "virtio-vsock";

/// The queues and what they need, from `DRIVER_OK` to reset.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio-vsock device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    /// A `TRANSPORT_RESET` event is owed to the guest (set for a restored device).
    reset_event_pending: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for the guest with CID `cid` (in [`MIN_GUEST_CID`]..=[`MAX_GUEST_CID`]):
    /// host programs connect through `listener` (bound at `path`), and guest connections to
    /// host port P go to `{path}_P`. `restored`: the device replaces one from a snapshot, and
    /// tells the guest its connections are gone once it runs.
    pub fn new(
        cid: u64,
        listener: UnixListener,
        path: PathBuf,
        restored: bool,
    ) -> std::io::Result<Self> {
        Ok(Vsock {
            cid,
            muxer: Muxer::new(cid, listener, path)?,
            active: None,
            reset_event_pending: restored,
        })
    }

    /// Sends the guest every packet the host side has for it, while there are receive buffers,
    /// [`CHAINS_PER_RUN`] at most: with more, the muxer wakes the event loop again
    /// ([`Muxer::wake`]) once everyone else had a turn. Then each connection's socket is watched
    /// as it now needs.
    fn fill_rx(&mut self) {
        if self.fill_rx_queue() {
            self.muxer.wake();
        }
        self.muxer.sync_interest();
    }

    /// Returns whether it stopped at its budget.
    fn fill_rx_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let mut added = false;
        let mut taken = 0;
        let mut more = false;
        while self.muxer.has_rx() {
            if taken == CHAINS_PER_RUN {
                more = true;
                break;
            }
            let Some(mut chain) = next_chain(&mut active.rx, mem) else {
                break;
            };
            taken += 1;
            let head = chain.head_index();
            let used = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut packet) => self.muxer.fill_rx_packet(&mut packet),
                Err(e) => {
                    debug!("{LOG_NAME}: unusable receive chain: {e}");
                    0
                }
            };
            match active.rx.add_used(mem, head, used) {
                Ok(()) => added = true,
                Err(e) => debug!("{LOG_NAME}: cannot return receive chain {head}: {e}"),
            }
        }
        if added && queue::needs_notification(&mut active.rx, mem, LOG_NAME) {
            queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        }
        more
    }

    /// Every packet the guest sent goes to the host side ([`CHAINS_PER_RUN`] at most).
    fn process_tx(&mut self) -> QueueRun {
        let Some(active) = self.active.as_mut() else {
            return QueueRun::default();
        };
        let mem = &active.mem;
        let muxer = &mut self.muxer;
        let run = queue::process_chains(&mut active.tx, mem, LOG_NAME, |mut chain| {
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(packet) => muxer.recv_from_guest(&packet),
                Err(e) => debug!("{LOG_NAME}: dropping a transmit chain: {e}"),
            }
            0
        });
        let notified = run.added && queue::needs_notification(&mut active.tx, mem, LOG_NAME);
        if notified {
            queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        }
        QueueRun {
            notified,
            more: run.more,
        }
    }

    /// Sends the owed `TRANSPORT_RESET` event, once the guest has given an event buffer.
    fn send_events(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !self.reset_event_pending {
            return;
        }
        let mem = &active.mem;
        let Some(chain) = next_chain(&mut active.event, mem) else {
            return;
        };
        let head = chain.head_index();
        let mut used = 0;
        if let Some(desc) = chain.into_iter().next() {
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            if desc.is_write_only()
                && desc.len() as usize >= event.len()
                && mem.write_slice(&event, desc.addr()).is_ok()
            {
                used = event.len() as u32;
                self.reset_event_pending = false;
                debug!("{LOG_NAME}: sent TRANSPORT_RESET");
            }
        }
        if let Err(e) = active.event.add_used(mem, head, used) {
            debug!("{LOG_NAME}: cannot return event chain {head}: {e}");
        }
        if queue::needs_notification(&mut active.event, mem, LOG_NAME) {
            queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        }
    }
}

/// The next available chain of `queue`; when the ring is empty, notifications are turned on
/// (the driver tells the device when it adds buffers) and it looks once more.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Option<virtio_queue::DescriptorChain<&'m GuestMemoryMmap>> {
    if let Some(chain) = queue::pop_chain(queue, mem, LOG_NAME) {
        return Some(chain);
    }
    match queue.enable_notification(mem) {
        Ok(true) => queue::pop_chain(queue, mem, LOG_NAME),
        Ok(false) => None,
        Err(e) => {
            debug!("{LOG_NAME}: cannot enable notifications: {e}");
            None
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }` (§5.10.4).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        // The transport has set each queue's VIRTIO_RING_F_EVENT_IDX as negotiated; no
        // other feature changes what the device does.
        let [rx, tx, event] = super::ready_queues(queues)?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
        });
        Ok(())
    }

    /// Drops the queues and every connection (their host sockets are closed); the listener
    /// stays. Runs on a vCPU thread: it only closes descriptors.
    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        self.active
            .as_ref()
            .map(|a| vec![a.rx.state(), a.tx.state(), a.event.state()])
            .unwrap_or_default()
    }

    fn process_queue(&mut self, queue_index: usize) -> QueueRun {
        if self.active.is_none() {
            return QueueRun::default();
        }
        let run = match queue_index {
            RX_QUEUE => QueueRun::default(),
            TX_QUEUE => self.process_tx(),
            EVENT_QUEUE => {
                self.send_events();
                QueueRun::default()
            }
            _ => return QueueRun::default(),
        };
        // Whatever the guest did may have made packets for it (replies, credit).
        self.fill_rx();
        run
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn process_backend(&mut self, index: usize) {
        if index != 0 || self.active.is_none() {
            return;
        }
        self.muxer.process_host_events();
        self.fill_rx();
    }

    /// The host side is polled while the device runs; a connection waiting for guest credit or
    /// receive buffers is taken out of the muxer's epoll set meanwhile, so nothing spins.
    fn backend_wanted(&self, _index: usize) -> bool {
        self.active.is_some()
    }
}
