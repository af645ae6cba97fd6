//! The host side of virtio-vsock: the Unix listener host programs connect to, one Unix stream
//! per connection, and the order in which connections get the guest's receive buffers.
//!
//! Everything host-side is in one epoll set ([`Muxer::epoll_fd`]), which the VMM's event loop
//! polls as the device's backend descriptor: the listener, the host programs that have not
//! finished their `CONNECT` line yet, each connection's socket (for input only while the guest
//! has credit and the connection is not already waiting for a receive buffer; for output only
//! while data waits for the host), and a timer for deadlines. A connection with something for
//! the guest waits in a round-robin queue ([`Muxer::has_rx`], [`Muxer::fill_rx_packet`]), so one
//! busy connection does not starve the others.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{read_connect_line, Bounce, Connection, Control, RxPacket};
use super::{
    op, CONN_BUF_ALLOC, HOST_CID, LOG_NAME, MAX_CONNECTIONS, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// How long a host program may take to send its `CONNECT` line, and the guest to answer the
/// `REQUEST` it leads to; then the host connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most `RST`s for packets that belong to no connection waiting for receive buffers; more
/// are dropped (a guest flooding requests that are refused only loses its replies).
pub const MAX_PENDING_RESETS: usize = 1024;
/// Host programs that may be in the middle of their `CONNECT` line at once.
const MAX_PENDING_HOST: usize = 256;
/// The most host events one [`Muxer::process_host_events`] call handles (the event loop calls
/// again while more are ready).
const EVENT_BATCH: usize = 64;
/// The host-side ports given to host-initiated connections start here (Firecracker's choice).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const FIRST_ID: u64 = 16;

/// (host-side port, guest-side port).
type Key = (u32, u32);

/// A host program that connected and has not finished its `CONNECT` line.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The host side of the device.
pub struct Muxer {
    cid: u64,
    epoll: Epoll,
    listener: UnixListener,
    /// `{path}_{port}` is where a guest connection to host port `port` goes.
    path: PathBuf,
    timer: TimerFd,
    /// Signalled when the device stopped at its budget with packets left for the guest
    /// ([`Muxer::wake`]).
    wake: EventFd,
    /// When the timer is set to go off, if it is.
    timer_at: Option<Instant>,
    next_id: u64,
    next_local_port: u32,
    pending_host: HashMap<u64, PendingHost>,
    conns: HashMap<u64, (Key, Connection)>,
    ids: HashMap<Key, u64>,
    /// Connections with something for the guest, in turn.
    rxq: VecDeque<u64>,
    /// `RST`s owed for packets that belong to no connection.
    resets: VecDeque<Key>,
    /// Host data read ahead for one connection.
    bounce: Bounce,
    /// Connections whose epoll interest may have to change ([`Muxer::sync_interest`]).
    dirty: Vec<u64>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    /// The host side for the guest `cid`, on `listener` (bound at `path`).
    pub fn new(cid: u64, listener: UnixListener, path: PathBuf) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new().map_err(io::Error::from)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TIMER),
        )?;
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_WAKE),
        )?;
        Ok(Muxer {
            cid,
            epoll,
            listener,
            path,
            timer,
            wake,
            timer_at: None,
            next_id: FIRST_ID,
            next_local_port: FIRST_LOCAL_PORT,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            ids: HashMap::new(),
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            bounce: Bounce::new(),
            dirty: Vec::new(),
        })
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Connections now (both directions, handshakes with the guest included).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held for host programs, all connections together.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.conns.values().map(|(_, c)| c.buffered()).sum()
    }

    /// Whether the deadline timer is set.
    #[cfg(test)]
    pub(super) fn timer_armed(&self) -> bool {
        self.timer_at.is_some()
    }

    /// `RST`s waiting for receive buffers.
    #[cfg(test)]
    pub(super) fn pending_resets(&self) -> usize {
        self.resets.len()
    }

    /// Drops every connection and half-made one (device reset). Closing a descriptor takes it
    /// out of the epoll set; nothing else is called (this runs on a vCPU thread).
    pub fn reset(&mut self) {
        self.pending_host.clear();
        self.conns.clear();
        self.ids.clear();
        self.rxq.clear();
        self.resets.clear();
        self.bounce.owner = None;
        self.dirty.clear();
    }

    /// Makes the epoll descriptor ready, so that the event loop calls the device again after
    /// the other ready descriptors: it stopped at its budget with packets left.
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            warn!("{LOG_NAME}: cannot wake the device: {e}");
        }
    }

    /// Whether a packet for the guest is waiting for a receive buffer.
    pub fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// Handles what is ready on the host side: new host programs, `CONNECT` lines, sockets
    /// readable (their connection queues for the guest) or writable (waiting data goes), hang
    /// ups and deadlines. Never blocks.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                debug!("{LOG_NAME}: epoll_wait: {e}");
                return;
            }
        };
        for event in &events[..n] {
            match event.data() {
                TOKEN_LISTENER => self.accept_host(),
                TOKEN_TIMER => self.expire(),
                // The device goes on filling receive buffers after this.
                TOKEN_WAKE => {
                    let _ = self.wake.read();
                }
                id => self.host_event(id, event.events()),
            }
        }
    }

    fn accept_host(&mut self) {
        // A bounded number per call; the listener stays readable for the rest.
        for _ in 0..EVENT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{LOG_NAME}: cannot accept a host connection: {e}");
                    return;
                }
            };
            if self.pending_host.len() >= MAX_PENDING_HOST
                || self.conns.len() >= super::MAX_CONNECTIONS
            {
                debug!("{LOG_NAME}: too many connections; closing a new host one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.new_id();
            let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, id);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
            {
                warn!("{LOG_NAME}: cannot watch a host connection: {e}");
                continue;
            }
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            self.pending_host.insert(
                id,
                PendingHost {
                    stream,
                    line: Vec::new(),
                    deadline,
                },
            );
            self.arm_timer(deadline);
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn host_event(&mut self, id: u64, events: u32) {
        if let Some(mut pending) = self.pending_host.remove(&id) {
            match read_connect_line(&mut pending.stream, &mut pending.line) {
                Ok(Some(port)) => self.connect_to_guest(id, pending.stream, port),
                Ok(None) => {
                    self.pending_host.insert(id, pending);
                }
                Err(e) => debug!("{LOG_NAME}: host connection dropped: {e}"),
            }
            return;
        }
        let Some((_, conn)) = self.conns.get_mut(&id) else {
            return;
        };
        if events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            // Closed altogether: what it wrote still goes to the guest, then RST. A hung-up
            // socket is always ready, so it leaves the epoll set.
            conn.host_closed = true;
            conn.readable = true;
        }
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
            conn.readable = true;
        }
        if events & libc::EPOLLOUT as u32 != 0 {
            conn.flush_to_host();
        }
        self.update(id);
    }

    /// A host program asked for guest port `peer_port`: a new connection owes the guest a
    /// `REQUEST` from a fresh host-side port.
    fn connect_to_guest(&mut self, id: u64, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!("{LOG_NAME}: too many connections; closing a host one");
            return;
        }
        let Some(local_port) = self.free_local_port(peer_port) else {
            return;
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut conn = Connection::host_initiated(stream, deadline);
        // Registered with the pending host program's interest until `sync_interest` sets its own.
        conn.interest = Some((libc::EPOLLIN | libc::EPOLLRDHUP) as u32);
        self.ids.insert((local_port, peer_port), id);
        self.conns.insert(id, ((local_port, peer_port), conn));
        self.arm_timer(deadline);
        self.update(id);
    }

    fn free_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.ids.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// Closes host programs and connections whose deadline passed, and sets the timer for the
    /// next one.
    fn expire(&mut self) {
        let _ = self.timer.wait();
        self.timer_at = None;
        let now = Instant::now();
        self.pending_host.retain(|_, p| p.deadline > now);
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, (_, c))| c.deadline().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            debug!("{LOG_NAME}: the guest did not answer a host connection in time");
            if let Some((_, conn)) = self.conns.get_mut(&id) {
                conn.owe_reset();
            }
            self.update(id);
        }
        let next = self
            .pending_host
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|(_, c)| c.deadline()))
            .min();
        if let Some(next) = next {
            self.arm_timer(next);
        }
    }

    fn arm_timer(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(after, None) {
            Ok(()) => self.timer_at = Some(at),
            Err(e) => warn!("{LOG_NAME}: cannot set the timer: {e}"),
        }
    }

    /// A packet from the guest (its header checked by `virtio-vsock`: the data is in the
    /// chain and at most the packet size).
    pub fn recv_from_guest<B: BitmapSlice>(&mut self, packet: &VsockPacket<B>) {
        if packet.src_cid() != self.cid || packet.dst_cid() != HOST_CID {
            debug!(
                "{LOG_NAME}: dropping a packet from CID {} to CID {}",
                packet.src_cid(),
                packet.dst_cid()
            );
            return;
        }
        let key = (packet.dst_port(), packet.src_port());
        if packet.type_() != TYPE_STREAM {
            self.reset_key(key, packet.op());
            return;
        }
        let Some(&id) = self.ids.get(&key) else {
            match packet.op() {
                op::REQUEST => self.connect_to_host(key, packet.buf_alloc(), packet.fwd_cnt()),
                other => self.reset_key(key, other),
            }
            return;
        };
        let Some((_, conn)) = self.conns.get_mut(&id) else {
            return;
        };
        conn.set_peer_credit(packet.buf_alloc(), packet.fwd_cnt());
        match packet.op() {
            op::RESPONSE => conn.accept_response(key.0),
            op::RW => {
                if let Some(data) = packet.data_slice() {
                    conn.send_to_host(data);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.owe(Control::CreditUpdate),
            op::SHUTDOWN => conn.guest_shutdown(packet.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND)),
            op::RST => {
                self.remove(id);
                return;
            }
            // A second REQUEST for a connection, or an operation that does not exist.
            _ => conn.owe_reset(),
        }
        self.update(id);
    }

    /// The guest asked for host port `key.0`: connect to `{path}_{port}` without waiting; a
    /// connection owes the guest a `RESPONSE`, a refusal an `RST`.
    fn connect_to_host(&mut self, key: Key, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            debug!(
                "{LOG_NAME}: too many connections; refusing guest port {}",
                key.1
            );
            self.reset_key(key, op::REQUEST);
            return;
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = match connect_nonblocking(path.as_ref()) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(
                    "{LOG_NAME}: guest connection to host port {} refused: {e}",
                    key.0
                );
                self.reset_key(key, op::REQUEST);
                return;
            }
        };
        let id = self.new_id();
        let conn = Connection::guest_initiated(stream, buf_alloc, fwd_cnt);
        self.ids.insert(key, id);
        self.conns.insert(id, (key, conn));
        self.update(id);
    }

    /// Owes the guest an `RST` for `key`, which has no connection (none for an `RST`).
    fn reset_key(&mut self, key: Key, op_received: u16) {
        if let Some(id) = self.ids.get(&key).copied() {
            self.remove(id);
        }
        if op_received == op::RST {
            return;
        }
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(key);
        } else {
            debug!("{LOG_NAME}: too many resets waiting for the guest; dropping one");
        }
    }

    fn remove(&mut self, id: u64) {
        if self.bounce.owner == Some(id) {
            self.bounce.owner = None;
        }
        if let Some((key, _conn)) = self.conns.remove(&id) {
            // Dropping the stream closes it, which takes it out of the epoll set.
            self.ids.remove(&key);
        }
    }

    /// After anything happened to connection `id`: its place in the queue for the guest, and a
    /// mark for [`Muxer::sync_interest`].
    fn update(&mut self, id: u64) {
        let Some((_, conn)) = self.conns.get_mut(&id) else {
            return;
        };
        conn.note_stalled();
        if conn.wants_rx() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(id);
        }
        self.dirty.push(id);
    }

    /// Sets the epoll interest of every connection touched since the last call as it now
    /// wants ([`Connection::wanted_interest`]). The device calls it when it is done with an
    /// event, after the guest got what it could take: a message that is read as soon as it
    /// comes never takes its socket out of the set and back.
    pub fn sync_interest(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            let Some((_, conn)) = self.conns.get_mut(&id) else {
                continue;
            };
            let wanted = conn.wanted_interest();
            if wanted == conn.interest {
                continue;
            }
            let fd = conn.stream.as_raw_fd();
            let result = match (conn.interest, wanted) {
                (None, Some(events)) => self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::from_bits_truncate(events), id),
                ),
                (Some(_), Some(events)) => self.epoll.ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(EventSet::from_bits_truncate(events), id),
                ),
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => conn.interest = wanted,
                Err(e) => {
                    debug!("{LOG_NAME}: cannot watch a connection: {e}");
                    conn.owe_reset();
                    if !conn.queued {
                        conn.queued = true;
                        self.rxq.push_back(id);
                    }
                }
            }
        }
        // Its allocation is kept for the next event.
        self.dirty = dirty;
    }

    /// Writes the next packet for the guest into `packet` (a receive buffer) and returns its
    /// length, header included; 0 if there was nothing after all.
    pub fn fill_rx_packet<B: BitmapSlice>(&mut self, packet: &mut VsockPacket<B>) -> u32 {
        if let Some(key) = self.resets.pop_front() {
            self.write_header(packet, key, op::RST, 0, 0, 0);
            return PKT_HEADER_SIZE as u32;
        }
        while let Some(id) = self.rxq.pop_front() {
            let Some((key, conn)) = self.conns.get_mut(&id) else {
                continue;
            };
            let key = *key;
            conn.queued = false;
            if !conn.wants_rx() && self.bounce.owner != Some(id) {
                self.update(id);
                continue;
            }
            let data = packet.data_slice().cloned();
            let (op, flags, len) = match conn.next_packet(id, data.as_ref(), &mut self.bounce) {
                RxPacket::Reset => {
                    self.remove(id);
                    self.write_header(packet, key, op::RST, 0, 0, 0);
                    return PKT_HEADER_SIZE as u32;
                }
                RxPacket::Data(n) => (op::RW, 0, n),
                RxPacket::Control(Control::Request) => (op::REQUEST, 0, 0),
                RxPacket::Control(Control::Response) => (op::RESPONSE, 0, 0),
                RxPacket::Control(Control::Shutdown(flags)) => (op::SHUTDOWN, flags, 0),
                RxPacket::Control(Control::CreditUpdate) => (op::CREDIT_UPDATE, 0, 0),
                RxPacket::Control(Control::CreditRequest) => (op::CREDIT_REQUEST, 0, 0),
            };
            let fwd_cnt = conn.fwd_cnt_for_packet();
            if self.bounce.owner == Some(id) {
                // Its read-ahead goes first: the bounce buffer is the device's only one.
                conn.queued = true;
                self.rxq.push_front(id);
            }
            self.update(id);
            self.write_header(packet, key, op, flags, len, fwd_cnt);
            return PKT_HEADER_SIZE as u32 + len;
        }
        0
    }

    fn write_header<B: BitmapSlice>(
        &self,
        packet: &mut VsockPacket<B>,
        key: Key,
        op: u16,
        flags: u32,
        len: u32,
        fwd_cnt: u32,
    ) {
        packet
            .set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(key.0)
            .set_dst_port(key.1)
            .set_len(len)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_buf_alloc(CONN_BUF_ALLOC)
            .set_fwd_cnt(fwd_cnt);
    }
}

/// Connects a Unix stream socket to `path` without blocking: a listener whose backlog is full
/// refuses (`EAGAIN`) instead of holding the event loop.
fn connect_nonblocking(path: &std::path::Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len is within it.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
