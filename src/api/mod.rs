//! The control API (`--api-socket PATH`): HTTP/1.1 with JSON bodies on a Unix socket, so that
//! `curl --unix-socket PATH http://localhost/vm` works. Endpoints: [`routes`]; parsing and
//! response writing: [`http`]; the socket file: [`socket`].
//!
//! The server is one event-loop subscriber on the main thread ([`ApiServer`]): no thread of its
//! own. The listening socket and every connection are non-blocking; each connection has a
//! timerfd deadline ([`CLIENT_TIMEOUT`]), so a client that sends nothing, sends half a
//! request or stops reading its answers is dropped and cannot hold the loop up. Buffers are
//! bounded (a head of 8 KiB, a body of 64 KiB, at most 64 KiB of answers waiting), and at most
//! [`MAX_CONNECTIONS`] clients are served at once (the next one gets a 503).
//!
//! A connection's deadline is armed when it is accepted and again each time an answer has
//! been written in full: a client has that long to send its next whole request and to read
//! the answer. Requests are answered in order (pipelining works); HTTP/1.1 keeps the
//! connection open unless the client sends `Connection: close`. After a request the server
//! refuses (malformed, too large), it answers, stops writing, and reads and drops what else the
//! client sends until it closes (at most 1 MiB, within the deadline), so that the client
//! reads the answer rather than a reset.

pub mod http;
pub mod routes;
pub mod socket;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

pub use routes::{DeviceInfo, Lifecycle, VmStatus};
pub use socket::{SocketError, SocketFile};

use http::{Parsed, Response};

/// How long a client has to send a whole request, and to read its answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Clients served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// While this much of the answers is waiting to be written, no more requests are read.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// The most a connection buffers: one whole request of the largest size always fits.
const MAX_INPUT: usize = http::MAX_HEAD + http::MAX_BODY;
/// What is read and dropped after a refused request before the connection is closed anyway.
const MAX_DISCARD: usize = 1 << 20;
/// After a failed `accept` (out of file descriptors, say), the listener rests this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

const TOKEN_LISTENER: u32 = 0;
const TOKEN_ACCEPT_RETRY: u32 = 1;
/// Connection `slot`'s socket is `TOKEN_CONNECTIONS + 2 * slot`, its deadline the next one.
const TOKEN_CONNECTIONS: u32 = 2;

/// When a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// It stays open for the next request.
    No,
    /// Once the answers are written (`Connection: close`, HTTP/1.0, `PUT /vm/stop`).
    AfterOutput,
    /// The last request was refused: once the answer is written, the write side is shut down
    /// and input dropped until the client closes.
    Discarding,
}

struct Connection {
    stream: UnixStream,
    deadline: TimerFd,
    input: Vec<u8>,
    output: Vec<u8>,
    closing: Closing,
    /// `100 Continue` was sent for the request being read.
    continue_sent: bool,
    discarded: usize,
    /// The client will send nothing more (read returned 0).
    peer_done: bool,
    /// The events the connection is registered for.
    interest: EventSet,
}

impl Connection {
    /// Whether to read from the client now.
    fn wants_input(&self) -> bool {
        !self.peer_done
            && match self.closing {
                Closing::No => {
                    self.input.len() < MAX_INPUT && self.output.len() < MAX_PENDING_OUTPUT
                }
                Closing::AfterOutput => false,
                Closing::Discarding => self.output.is_empty(),
            }
    }

    fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_input() {
            set |= EventSet::IN;
        }
        if !self.output.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Reads what the client has sent; false if the connection failed.
    fn read_input(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        while self.wants_input() {
            let room = match self.closing {
                Closing::Discarding => chunk.len(),
                _ => chunk.len().min(MAX_INPUT - self.input.len()),
            };
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => self.peer_done = true,
                Ok(n) if self.closing == Closing::Discarding => {
                    self.discarded += n;
                    if self.discarded > MAX_DISCARD {
                        return false;
                    }
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("API client: read failed: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Answers every complete request in the input, in order.
    fn handle_requests(&mut self, vm: &dyn Lifecycle) {
        while self.closing == Closing::No && self.output.len() < MAX_PENDING_OUTPUT {
            match http::parse(&self.input) {
                Ok(Parsed::Incomplete { expects_continue }) => {
                    if expects_continue && !self.continue_sent {
                        self.output.extend_from_slice(http::CONTINUE);
                        self.continue_sent = true;
                    }
                    return;
                }
                Ok(Parsed::Complete { request, len }) => {
                    self.input.drain(..len);
                    self.continue_sent = false;
                    let mut response = routes::handle(vm, &request);
                    response.close |= !request.keep_alive;
                    if response.close {
                        self.closing = Closing::AfterOutput;
                    }
                    response.write_to(&mut self.output);
                }
                Err(e) => {
                    log::debug!("API client: refused request: {e}");
                    let mut response = Response::error(e.status, e.message);
                    response.close = true;
                    response.write_to(&mut self.output);
                    self.input = Vec::new();
                    self.closing = Closing::Discarding;
                }
            }
        }
    }

    /// Writes what it can of the answers; false if the connection failed.
    fn flush(&mut self) -> bool {
        let had_output = !self.output.is_empty();
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return false,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("API client: write failed: {e}");
                    return false;
                }
            }
        }
        if had_output {
            match self.closing {
                // The client has the answer: it gets a new deadline for the next request.
                Closing::No => {
                    if let Err(e) = self.deadline.reset(CLIENT_TIMEOUT, None) {
                        log::warn!("API client: cannot re-arm its deadline: {e}");
                        return false;
                    }
                }
                Closing::Discarding => {
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
                Closing::AfterOutput => {}
            }
        }
        true
    }

    /// Whether there is nothing more to do on this connection.
    fn finished(&self) -> bool {
        self.output.is_empty()
            && (self.peer_done
                || self.closing == Closing::AfterOutput
                || (self.closing == Closing::No && self.input.len() >= MAX_INPUT))
    }
}

/// The API server, on the event loop.
pub struct ApiServer {
    listener: UnixListener,
    /// Armed while the listener rests after a failed accept.
    accept_retry: TimerFd,
    listening: bool,
    connections: Vec<Option<Connection>>,
    vm: Arc<dyn Lifecycle>,
}

impl ApiServer {
    /// Serves `vm` on `listener` (bound by [`socket::bind`], non-blocking).
    pub fn new(listener: UnixListener, vm: Arc<dyn Lifecycle>) -> io::Result<Self> {
        Ok(ApiServer {
            listener,
            accept_retry: TimerFd::new().map_err(io::Error::from)?,
            listening: false,
            connections: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            vm,
        })
    }

    fn listen(&mut self, ops: &mut EventOps) {
        let events = Events::with_data(&self.listener, TOKEN_LISTENER, EventSet::IN);
        match ops.add(events) {
            Ok(()) => self.listening = true,
            Err(e) => log::error!("API: cannot watch the listening socket: {e:?}"),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Level-triggered: the listener would wake the loop again at once.
                    log::warn!("API: cannot accept a client ({e}); retrying in {ACCEPT_RETRY:?}");
                    let _ = ops.remove(Events::empty(&self.listener));
                    self.listening = false;
                    if let Err(e) = self.accept_retry.reset(ACCEPT_RETRY, None) {
                        log::error!("API: cannot arm the accept retry: {e}; the API stops");
                    }
                    return;
                }
            };
            if let Err(e) = self.add_connection(stream, ops) {
                log::warn!("API: cannot serve a client: {e}");
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream, ops: &mut EventOps) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let Some(slot) = self.connections.iter().position(Option::is_none) else {
            let mut busy = Vec::new();
            let mut response = Response::error(
                503,
                format!("the API serves {MAX_CONNECTIONS} clients at once; try again"),
            );
            response.close = true;
            response.write_to(&mut busy);
            // Best effort, never blocking: the client may not even read it.
            let _ = (&stream).write(&busy);
            return Ok(());
        };
        let mut deadline = TimerFd::new().map_err(io::Error::from)?;
        deadline
            .reset(CLIENT_TIMEOUT, None)
            .map_err(io::Error::from)?;
        let token = TOKEN_CONNECTIONS + 2 * slot as u32;
        let conn = Connection {
            stream,
            deadline,
            input: Vec::new(),
            output: Vec::new(),
            closing: Closing::No,
            continue_sent: false,
            discarded: 0,
            peer_done: false,
            interest: EventSet::IN,
        };
        let err = |e| io::Error::other(format!("cannot watch the connection: {e:?}"));
        ops.add(Events::with_data(&conn.stream, token, EventSet::IN))
            .map_err(err)?;
        if let Err(e) = ops.add(Events::with_data(&conn.deadline, token + 1, EventSet::IN)) {
            let _ = ops.remove(Events::empty(&conn.stream));
            return Err(err(e));
        }
        self.connections[slot] = Some(conn);
        Ok(())
    }

    fn close(&mut self, slot: usize, ops: &mut EventOps) {
        if let Some(conn) = self.connections.get_mut(slot).and_then(Option::take) {
            let _ = ops.remove(Events::empty(&conn.stream));
            let _ = ops.remove(Events::empty(&conn.deadline));
        }
    }

    fn on_connection(&mut self, slot: usize, events: EventSet, ops: &mut EventOps) {
        let Some(conn) = self.connections.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut ok = !events.contains(EventSet::ERROR);
        if ok && events.intersects(EventSet::IN | EventSet::HANG_UP) {
            ok = conn.read_input();
        }
        if ok {
            conn.handle_requests(self.vm.as_ref());
            ok = conn.flush();
        }
        // A hang-up: the client is gone both ways, nothing more can reach it.
        if !ok || events.contains(EventSet::HANG_UP) || conn.finished() {
            self.close(slot, ops);
            return;
        }
        let interest = conn.interest();
        if interest != conn.interest {
            let token = TOKEN_CONNECTIONS + 2 * slot as u32;
            let events = Events::with_data(&conn.stream, token, interest);
            if ops.modify(events).is_err() {
                self.close(slot, ops);
                return;
            }
            conn.interest = interest;
        }
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        self.listen(ops);
        let retry = Events::with_data(&self.accept_retry, TOKEN_ACCEPT_RETRY, EventSet::IN);
        if let Err(e) = ops.add(retry) {
            log::error!("API: cannot watch the accept retry timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_LISTENER => self.accept(ops),
            TOKEN_ACCEPT_RETRY => {
                let _ = self.accept_retry.wait();
                if !self.listening {
                    self.listen(ops);
                }
            }
            token => {
                let index = token.saturating_sub(TOKEN_CONNECTIONS) as usize;
                let slot = index / 2;
                if index % 2 == 1 {
                    log::debug!("API client {slot}: timed out after {CLIENT_TIMEOUT:?}");
                    self.close(slot, ops);
                } else {
                    self.on_connection(slot, events.event_set(), ops);
                }
            }
        }
    }
}

#[cfg(test)]
mod stand_in;
#[cfg(test)]
mod tests;
