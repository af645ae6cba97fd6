//! Stand-ins for a virtio-net device's TAP: an in-memory [`Mock`] and a [`SocketBackend`] on a
//! `SOCK_SEQPACKET` pair, which keeps frame boundaries and becomes readable like a TAP.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::VolatileSlice;
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::net::tap::{readv, writev};
use crate::virtio::net::NetBackend;

/// What the mock backend holds and saw.
#[derive(Debug, Default)]
pub struct MockState {
    /// Frames waiting to be read by the device.
    pub rx: VecDeque<Vec<u8>>,
    /// The next read fails with this errno.
    pub rx_error: Option<i32>,
    /// Reads return 0 (end of file) once `rx` is empty.
    pub eof: bool,
    /// The room the device offered on each read.
    pub read_capacities: Vec<usize>,
    /// Frames the device wrote.
    pub tx: Vec<Vec<u8>>,
    /// Writes fail with this errno.
    pub tx_error: Option<i32>,
    /// Every `set_offload` mask.
    pub offloads: Vec<u32>,
    /// `set_offload` fails.
    pub offload_error: bool,
}

/// An in-memory backend, shared with the test.
#[derive(Debug, Clone)]
pub struct Mock {
    state: Arc<Mutex<MockState>>,
    fd: Arc<EventFd>,
}

impl Mock {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            fd: Arc::new(EventFd::new(0).unwrap()),
        }
    }

    /// What the backend holds and saw, locked.
    pub fn state(&self) -> MutexGuard<'_, MockState> {
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

/// A `SOCK_SEQPACKET` socket standing in for a TAP (frame boundaries are kept).
pub struct SocketBackend(OwnedFd);

impl NetBackend for SocketBackend {
    fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        readv(self.0.as_raw_fd(), bufs)
    }
    fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        writev(self.0.as_raw_fd(), bufs)
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A connected `SOCK_SEQPACKET` pair: the device's end (non-blocking) and the peer's
/// (blocking), which plays the host network.
pub fn seqpacket_pair() -> (SocketBackend, UnixDatagram) {
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
