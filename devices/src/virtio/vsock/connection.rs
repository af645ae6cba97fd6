//! One stream connection between a guest socket and a host Unix stream: its state, its credit
//! both ways (virtio 1.2 §5.10.6.3), and the packets it owes the guest.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use log::debug;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::{CONN_BUF_ALLOC, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// A host program connected and asked for a guest port: the `REQUEST` is sent (or about
    /// to be), the guest's `RESPONSE` or `RST` has not come, until the deadline.
    LocalInit(Instant),
    /// Both sides may send.
    Established,
}

/// A control packet the connection owes the guest, in the order they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    Request,
    Response,
    /// `SHUTDOWN` with these flags.
    Shutdown(u32),
    CreditUpdate,
    CreditRequest,
}

/// What the connection puts in one receive buffer ([`Connection::next_packet`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RxPacket {
    Control(Control),
    /// `RW` with this many bytes, read from the host socket into the buffer.
    Data(u32),
    /// `RST`: the connection is over, the muxer drops it.
    Reset,
}

/// One connection. `local_port` is the host side's port, `peer_port` the guest's.
#[derive(Debug)]
pub(super) struct Connection {
    pub stream: UnixStream,
    state: State,
    /// Control packets owed to the guest.
    controls: VecDeque<Control>,
    /// An `RST` is owed: the connection ends once it is sent.
    reset: bool,

    // Guest → host.
    /// Bytes the guest sent that the host socket has not taken yet (at most
    /// [`CONN_BUF_ALLOC`]).
    tx_buf: VecDeque<u8>,
    /// Bytes forwarded to the host socket (`fwd_cnt`, wrapping as the spec says).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest said it sends no more (`SHUTDOWN_SEND`); the host socket is shut down for
    /// writing once `tx_buf` is empty.
    guest_send_done: bool,
    /// The guest said it receives no more (`SHUTDOWN_RCV`).
    guest_recv_done: bool,
    /// The host socket is shut down for writing.
    host_write_shut: bool,

    // Host → guest.
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The guest's buffer for this connection and what it has consumed of it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The host socket may have input (it was readable and has not said `WouldBlock` since).
    pub readable: bool,
    /// The host socket reached end of file (the host shut it down for writing, or closed it).
    host_eof: bool,
    /// The host closed its end altogether (`EPOLLHUP`): after its data, the guest gets `RST`.
    pub host_closed: bool,
    /// A `CREDIT_REQUEST` was sent since the guest last gave credit.
    credit_requested: bool,

    /// In the muxer's queue of connections with something for the guest.
    pub queued: bool,
    /// The epoll events the muxer watches this socket for now (`None`: not in its set).
    pub interest: Option<u32>,
}

impl Connection {
    /// A connection the guest asked for (its `REQUEST` carried its credit), to a host socket
    /// that accepted: it owes the guest a `RESPONSE`.
    pub fn guest_initiated(stream: UnixStream, buf_alloc: u32, fwd_cnt: u32) -> Self {
        let mut conn = Self::new(stream, State::Established);
        conn.set_peer_credit(buf_alloc, fwd_cnt);
        conn.controls.push_back(Control::Response);
        conn
    }

    /// A connection a host program asked for: it owes the guest a `REQUEST`, and waits for the
    /// answer until `deadline`.
    pub fn host_initiated(stream: UnixStream, deadline: Instant) -> Self {
        let mut conn = Self::new(stream, State::LocalInit(deadline));
        conn.controls.push_back(Control::Request);
        conn
    }

    fn new(stream: UnixStream, state: State) -> Self {
        Connection {
            stream,
            state,
            controls: VecDeque::new(),
            reset: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            guest_send_done: false,
            guest_recv_done: false,
            host_write_shut: false,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: false,
            host_eof: false,
            host_closed: false,
            credit_requested: false,
            queued: false,
            interest: None,
        }
    }

    /// Every packet from the guest carries its credit (§5.10.6.3).
    pub fn set_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest has room for. A guest whose numbers make no sense (it claims to have
    /// consumed more than it was sent) gets nothing until they do.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `fwd_cnt` for a packet to the guest; the guest now knows it.
    pub fn fwd_cnt_for_packet(&mut self) -> u32 {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.fwd_cnt.0
    }

    pub fn owe(&mut self, control: Control) {
        if !self.controls.contains(&control) {
            self.controls.push_back(control);
        }
    }

    /// When a host-initiated connection gives up waiting for the guest's answer; none once the
    /// guest answered or an `RST` is owed (the timer then has nothing left to wait for here).
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::LocalInit(deadline) if !self.reset => Some(deadline),
            _ => None,
        }
    }

    /// Ends the connection with an `RST` to the guest.
    pub fn owe_reset(&mut self) {
        self.reset = true;
    }

    /// The guest's `RESPONSE` to the `REQUEST` of a host-initiated connection: the host
    /// program hears `OK <local_port>`.
    pub fn accept_response(&mut self, local_port: u32) {
        if !matches!(self.state, State::LocalInit(_)) {
            debug!("virtio-vsock: RESPONSE on an established connection; resetting it");
            self.reset = true;
            return;
        }
        self.state = State::Established;
        let line = format!("OK {local_port}\n");
        // A fresh socket's buffer is empty: a short line fits, or the host end is gone.
        if !matches!(self.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
            self.reset = true;
        }
    }

    /// Data from the guest for the host socket: written straight from guest memory; what the
    /// socket does not take now waits in `tx_buf`. More than the credit the guest was given
    /// resets the connection.
    pub fn send_to_host<B: BitmapSlice>(&mut self, data: &VolatileSlice<B>) {
        if self.state != State::Established || self.guest_send_done || self.host_write_shut {
            debug!("virtio-vsock: data on a connection that takes none; resetting it");
            self.reset = true;
            return;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match self.stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    debug!("virtio-vsock: the host socket failed: {e}");
                    self.reset = true;
                    return;
                }
            }
            self.forwarded(written);
        }
        let rest = data.len() - written;
        if rest == 0 {
            return;
        }
        if self.tx_buf.len() + rest > CONN_BUF_ALLOC as usize {
            debug!("virtio-vsock: the guest sent past its credit; resetting the connection");
            self.reset = true;
            return;
        }
        let mut bytes = vec![0u8; rest];
        // `written` < data.len(): the offset is inside the slice.
        if let Ok(tail) = data.offset(written) {
            tail.copy_to(&mut bytes[..]);
        }
        self.tx_buf.extend(bytes);
    }

    /// Counts `n` bytes as taken by the host socket; the guest hears of it once it has taken
    /// a quarter of the credit since the guest last did (so a one-way stream from the guest
    /// never waits for an update).
    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CONN_BUF_ALLOC / 4 {
            self.owe(Control::CreditUpdate);
        }
    }

    /// The host socket may take more: writes what waits in `tx_buf`, then the shutdown the
    /// guest asked for once it is empty.
    pub fn flush_to_host(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("virtio-vsock: the host socket failed: {e}");
                    self.reset = true;
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() {
            // What a stalled host reader made it hold goes back once it has caught up.
            self.tx_buf.shrink_to_fit();
        }
        self.finish_shutdowns();
    }

    /// The guest's `SHUTDOWN` with `flags`.
    pub fn guest_shutdown(&mut self, flags: u32) {
        self.guest_send_done |= flags & SHUTDOWN_SEND != 0;
        self.guest_recv_done |= flags & SHUTDOWN_RCV != 0;
        self.finish_shutdowns();
    }

    /// Carries out what both sides said: the host socket shut down for writing once the
    /// guest's data is all in it; `RST` once neither side sends any more (Linux's driver waits
    /// for it to free the socket).
    fn finish_shutdowns(&mut self) {
        if !self.tx_buf.is_empty() {
            return;
        }
        if self.guest_send_done && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let guest_done = self.guest_send_done && self.guest_recv_done;
        let both_done = self.guest_send_done && self.host_eof;
        if guest_done || both_done {
            self.reset = true;
        }
    }

    /// Whether the connection has a packet for the guest now.
    pub fn wants_rx(&self) -> bool {
        self.reset || !self.controls.is_empty() || self.can_send_data()
    }

    /// Whether host data may go to the guest now (it is there, and the guest has credit).
    fn can_send_data(&self) -> bool {
        self.readable && self.data_allowed() && self.peer_credit() > 0
    }

    fn data_allowed(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.guest_recv_done
    }

    /// The epoll events the socket should be watched for now.
    pub fn wanted_interest(&self) -> Option<u32> {
        if self.host_closed || self.reset {
            return None;
        }
        let mut events = 0;
        // Input (and the host's half-close, which reads as end of file) only while it can go
        // to the guest: both stay ready until read, and would make the loop spin.
        if !self.readable && self.data_allowed() && self.peer_credit() > 0 {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if !self.tx_buf.is_empty() {
            events |= libc::EPOLLOUT as u32;
        }
        // EPOLLHUP and EPOLLERR come whatever is asked: the muxer then takes the socket out.
        Some(events)
    }

    /// The host socket had input and the guest no credit: ask it once for an update.
    pub fn note_stalled(&mut self) {
        if self.readable && self.data_allowed() && self.peer_credit() == 0 && !self.credit_requested
        {
            self.credit_requested = true;
            self.owe(Control::CreditRequest);
        }
    }

    /// The next packet for the guest, written into `data` (a receive buffer's data part)
    /// when it is data. Control packets come first, then data while there is credit; the
    /// host socket's end of file becomes `SHUTDOWN` (or `RST` if the host closed altogether).
    ///
    /// Data comes from `bounce` first if it holds this connection's (`id`); else, when the
    /// guest has credit for more than this buffer and `bounce` is free, one read fills it
    /// ahead for the next buffers (one system call for up to [`Bounce::LEN`] bytes instead of
    /// one per buffer: Linux posts 4 KiB ones); else the host socket is read straight into
    /// the guest's buffer.
    pub fn next_packet<B: BitmapSlice>(
        &mut self,
        id: u64,
        data: Option<&VolatileSlice<B>>,
        bounce: &mut Bounce,
    ) -> RxPacket {
        if self.reset {
            return RxPacket::Reset;
        }
        if let Some(control) = self.controls.pop_front() {
            return RxPacket::Control(control);
        }
        let Some(data) = data.filter(|d| !d.is_empty()) else {
            return RxPacket::Control(Control::CreditUpdate);
        };
        if bounce.owner == Some(id) {
            return RxPacket::Data(bounce.take(data) as u32);
        }
        if !self.can_send_data() {
            // Nothing after all (the muxer asked `wants_rx` first): an update is harmless.
            return RxPacket::Control(Control::CreditUpdate);
        }
        let credit = self.peer_credit() as usize;
        let result = if bounce.owner.is_none() && credit > data.len() {
            let want = credit.min(Bounce::LEN);
            match std::io::Read::read(&mut self.stream, &mut bounce.buf[..want]) {
                Ok(n) => {
                    bounce.fill(id, n);
                    let taken = bounce.take(data);
                    Ok((n, want, taken))
                }
                Err(e) => Err(e),
            }
        } else {
            let want = data.len().min(credit);
            match data.subslice(0, want) {
                Ok(mut buf) => match self.stream.read_volatile(&mut buf) {
                    Ok(n) => Ok((n, want, n)),
                    Err(VolatileMemoryError::IOError(e)) => Err(e),
                    Err(e) => Err(io::Error::other(e.to_string())),
                },
                Err(_) => return RxPacket::Control(Control::CreditUpdate),
            }
        };
        match result {
            Ok((0, ..)) => {
                self.host_eof = true;
                self.readable = false;
                if self.host_closed {
                    self.reset = true;
                    return RxPacket::Reset;
                }
                self.finish_shutdowns();
                if self.reset {
                    return RxPacket::Reset;
                }
                RxPacket::Control(Control::Shutdown(SHUTDOWN_SEND))
            }
            Ok((n, want, delivered)) => {
                self.rx_cnt += Wrapping(n as u32);
                // A short read emptied the socket: wait for epoll rather than come back for a
                // `WouldBlock` (which would cost the guest a packet of its own).
                if n < want && !self.host_closed {
                    self.readable = false;
                }
                RxPacket::Data(delivered as u32)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.readable = false;
                RxPacket::Control(Control::CreditUpdate)
            }
            Err(e) => {
                debug!("virtio-vsock: reading the host socket failed: {e}");
                self.reset = true;
                RxPacket::Reset
            }
        }
    }

    /// Bytes held for the host now (for tests and the RSS bound).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }
}

/// Host data read ahead for one connection, waiting for the guest's next receive buffers: one
/// for the whole device, so vmm holds at most [`Bounce::LEN`] bytes this way.
#[derive(Debug)]
pub(super) struct Bounce {
    buf: Box<[u8]>,
    /// The connection whose bytes `buf[start..end]` are.
    pub owner: Option<u64>,
    start: usize,
    end: usize,
}

impl Bounce {
    /// The most bytes one read takes (Linux's largest packet).
    pub const LEN: usize = super::MAX_PKT_DATA as usize;

    pub fn new() -> Self {
        Bounce {
            buf: vec![0; Self::LEN].into_boxed_slice(),
            owner: None,
            start: 0,
            end: 0,
        }
    }

    /// `n` bytes were read into the buffer for connection `id`.
    fn fill(&mut self, id: u64, n: usize) {
        self.start = 0;
        self.end = n;
        self.owner = (n > 0).then_some(id);
    }

    /// Copies what fits of the held bytes into `data`; the buffer is free once all went.
    fn take<B: BitmapSlice>(&mut self, data: &VolatileSlice<B>) -> usize {
        let n = data.len().min(self.end - self.start);
        data.copy_from(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.owner = None;
        }
        n
    }
}

fn would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Reads `CONNECT <port>\n` from a host program (Firecracker's handshake), a byte at a time
/// as it arrives. `Ok(None)`: not all there yet.
pub(super) fn read_connect_line(
    stream: &mut UnixStream,
    line: &mut Vec<u8>,
) -> io::Result<Option<u32>> {
    use std::io::Read;
    /// `CONNECT 4294967295\n` and some slack.
    const MAX_LINE: usize = 32;
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before CONNECT",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "CONNECT line too long",
            ));
        }
    }
    let text = std::str::from_utf8(line).map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
    let port = text
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim_end_matches('\r').parse::<u32>().ok())
        .ok_or_else(|| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("not a CONNECT line: {text:?}"),
            )
        })?;
    Ok(Some(port))
}
