//! The host side of a virtio-net device: the [`NetBackend`] trait and its TAP implementation
//! (Linux `Documentation/networking/tuntap.rst`).
//!
//! A [`Tap`] is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio-net
//! header (`TUNSETVNETHDRSZ`), so every frame read or written on it starts with the same
//! `struct virtio_net_hdr_v1` the guest uses (virtio 1.2 §5.1.6): the device passes guest
//! frames to the TAP as they are, header included, and checksum and segmentation offloads go
//! through untouched in both directions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::VolatileSlice;

use crate::virtio::IOV_MAX;

/// The clone device every TUN/TAP interface is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// The longest interface name: `IFNAMSIZ` (16) less the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The virtio-net header the TAP puts before each frame and expects before each frame:
/// `struct virtio_net_hdr_v1` (with `num_buffers`), 12 bytes (virtio 1.2 §5.1.6).
pub const TAP_VNET_HDR_LEN: usize = 12;

/// Where frames come from and go to: the host side of a virtio-net device.
///
/// Frames in both directions start with the 12-byte virtio-net header. Implemented by [`Tap`];
/// tests use a socket pair or an in-memory mock.
pub trait NetBackend: Send {
    /// Reads one frame, header first, into `bufs` (filled in order) and returns its length.
    /// `Err` of kind [`io::ErrorKind::WouldBlock`] when no frame is waiting. The device always
    /// offers room for the largest frame, so a frame is never cut short.
    fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize>;

    /// Sends the frame gathered from `bufs` (header first) as one frame; returns the bytes
    /// taken.
    fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize>;

    /// Tells the backend which offloads the guest accepts in frames it receives: a mask of
    /// `TUN_F_*` flags (see [`super::tap_offload_flags`]).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;

    /// The descriptor to poll for readable frames; non-blocking, owned by the backend.
    fn raw_fd(&self) -> RawFd;
}

/// Why a TAP interface could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not one Linux accepts; checked before any system call.
    #[error(
        "invalid TAP interface name {name:?}: {reason}; use 1 to {MAX_NAME_LEN} bytes \
         without '/', ':' or whitespace"
    )]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` is missing or the kernel has no TUN/TAP driver.
    #[error(
        "cannot open {TUN_DEVICE}: the kernel has no TUN/TAP support here; load it with \
         `modprobe tun`, or create the node with `mknod /dev/net/tun c 10 200`"
    )]
    NoTunDevice(#[source] io::Error),
    /// `/dev/net/tun` exists but this user may not open it.
    #[error(
        "cannot open {TUN_DEVICE}: permission denied; make it readable and writable for this \
         user (it is normally mode 0666)"
    )]
    TunPermission(#[source] io::Error),
    /// Any other failure to open `/dev/net/tun`.
    #[error("cannot open {TUN_DEVICE}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` said `EPERM`.
    #[error(
        "no permission to create or attach to TAP interface {name:?}: creating one needs \
         CAP_NET_ADMIN; otherwise create it beforehand, owned by this user: \
         `ip tuntap add dev {name} mode tap user $USER`"
    )]
    PermissionDenied {
        /// The interface name.
        name: String,
    },
    /// `TUNSETIFF` said `EBUSY`.
    #[error(
        "TAP interface {name:?} is in use by another process; stop that process or choose \
         another name"
    )]
    Busy {
        /// The interface name.
        name: String,
    },
    /// `TUNSETIFF` said `EINVAL`: the name belongs to something else than a single-queue TAP.
    #[error(
        "interface {name:?} exists and is not a single-queue TAP interface (a TUN device, a \
         multi-queue TAP or another kind of interface); choose another name, or recreate it \
         with `ip tuntap add dev {name} mode tap`"
    )]
    NotATap {
        /// The interface name.
        name: String,
    },
    /// `TUNSETIFF` failed otherwise.
    #[error("cannot create or attach to TAP interface {name:?}")]
    SetInterface {
        /// The interface name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed: the kernel cannot put a 12-byte virtio-net header on frames.
    #[error("TAP interface {name:?} does not take a 12-byte virtio-net header (TUNSETVNETHDRSZ)")]
    VnetHeader {
        /// The interface name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// Checks `name` the way Linux's `dev_valid_name` does, so a bad name gets a clear error
/// before any system call.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is too long")
    } else if name == "." || name == ".." {
        Some("it is a directory name")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.contains(|c: char| c.is_whitespace() || c == '\0') {
        Some("it contains whitespace or a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TapError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The error for a failed `TUNSETIFF` on `name`.
fn set_iff_error(name: &str, source: io::Error) -> TapError {
    let name = name.to_owned();
    match source.raw_os_error() {
        Some(libc::EPERM) => TapError::PermissionDenied { name },
        Some(libc::EBUSY) => TapError::Busy { name },
        Some(libc::EINVAL) => TapError::NotATap { name },
        _ => TapError::SetInterface { name, source },
    }
}

/// The error for a failed `open("/dev/net/tun")`.
fn open_error(source: io::Error) -> TapError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice(source),
        Some(libc::EACCES | libc::EPERM) => TapError::TunPermission(source),
        _ => TapError::OpenTun(source),
    }
}

/// An open TAP interface, attached to this process until dropped (a non-persistent interface
/// that this process created disappears then).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens TAP interface `name`: creates it when it does not exist (which needs
    /// CAP_NET_ADMIN), or attaches to an existing persistent one (which needs CAP_NET_ADMIN or
    /// to be its owner). `name` may hold a `%d` template, which the kernel fills in; see
    /// [`name`](Self::name). The descriptor is non-blocking and close-on-exec, and frames carry
    /// a 12-byte virtio-net header. No offloads are on until
    /// [`set_offload`](NetBackend::set_offload).
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_name(name)?;
        // std opens every file with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(open_error)?;

        // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers, arrays
        // and pointers), for which all-zero bytes are a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // check_name() made sure the name and its NUL fit the array; the rest stays zero.
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is one, valid and
        // exclusively borrowed for the call. The descriptor is owned by `file`.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(set_iff_error(name, io::Error::last_os_error()));
        }
        // The kernel wrote back the interface's name (a `%d` template filled in), NUL-padded.
        let actual: Vec<u8> = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let name = String::from_utf8_lossy(&actual).into_owned();

        let hdr_len = TAP_VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to
        // `hdr_len`, alive for the call. The descriptor is owned by `file`.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::VnetHeader {
                name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self { file, name })
    }

    /// The interface's name, as the kernel has it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        readv(self.file.as_raw_fd(), bufs)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice]) -> io::Result<usize> {
        writev(self.file.as_raw_fd(), bufs)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long) and touches no
        // memory of ours. The descriptor is owned by `self.file`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn too_many_buffers() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a frame in more than {IOV_MAX} pieces"),
    )
}

/// One `readv` of `fd` into `bufs`, retried on `EINTR`: one frame from a TAP or a datagram
/// socket.
pub(crate) fn readv(fd: RawFd, bufs: &[VolatileSlice]) -> io::Result<usize> {
    if bufs.len() > IOV_MAX {
        return Err(too_many_buffers());
    }
    // Hold the guards for as long as the kernel may use the pointers.
    let guards: Vec<PtrGuardMut> = bufs.iter().map(VolatileSlice::ptr_guard_mut).collect();
    let iovs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    retry_on_eintr(|| {
        // SAFETY: each iovec describes a `VolatileSlice`, memory that is mapped and writable
        // for its whole length for as long as the slice lives (it outlives the call);
        // `guards` keeps the pointers valid; `iovs` holds at most IOV_MAX (1024) entries, so
        // its length fits a c_int. The kernel writes at most each iovec's length.
        unsafe { libc::readv(fd, iovs.as_ptr(), iovs.len() as libc::c_int) }
    })
}

/// Calls `syscall` until it does not fail with `EINTR`; a negative result is the OS error.
fn retry_on_eintr(mut syscall: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        match usize::try_from(syscall()) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// One `writev` of `bufs` to `fd`, retried on `EINTR`: one frame to a TAP or a datagram socket.
pub(crate) fn writev(fd: RawFd, bufs: &[VolatileSlice]) -> io::Result<usize> {
    if bufs.len() > IOV_MAX {
        return Err(too_many_buffers());
    }
    let guards: Vec<PtrGuard> = bufs.iter().map(VolatileSlice::ptr_guard).collect();
    let iovs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: g.len(),
        })
        .collect();
    retry_on_eintr(|| {
        // SAFETY: as in `readv`; writev only reads the memory.
        unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as libc::c_int) }
    })
}

/// Running code in a fresh network namespace, for tests that need a real TAP.
#[cfg(test)]
pub(crate) mod netns {
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::TUN_DEVICE;

    /// Runs `f` on a new thread moved into a new, empty network namespace (only that thread
    /// moves: namespaces belong to threads), so nothing it does touches the host's interfaces.
    /// The tests that call it are `#[ignore]`d where the build found no root or no
    /// `/dev/net/tun` (`cfg(no_netns)`, see build_probe.rs); a panic in `f` fails the test.
    pub fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        assert!(Path::new(TUN_DEVICE).exists(), "{TUN_DEVICE} is missing");
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes a flag word and touches no memory of ours; it moves only
            // the calling thread, which exits when `f` returns.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "cannot create a network namespace (needs CAP_SYS_ADMIN): {}",
                std::io::Error::last_os_error()
            );
            f()
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sockaddr_in` and `sockaddr` are both 16-byte plain C structs; the kernel
        // reads an AF_INET address from the generic one.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: all-zero bytes are a valid `ifreq` (see Tap::open).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        ifr
    }

    fn ioctl(sock: &OwnedFd, request: libc::Ioctl, ifr: &mut libc::ifreq) {
        // SAFETY: these SIOC* requests read and write one `struct ifreq`, which `ifr` is.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) };
        assert_eq!(
            ret,
            0,
            "ioctl {request:#x}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Gives interface `name` address `ip`/24 and brings it up (in the calling thread's
    /// namespace).
    pub fn configure(name: &str, ip: Ipv4Addr) {
        // SAFETY: socket takes integer arguments; the descriptor it returns is checked below
        // and then owned by `sock`.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(&sock, libc::SIOCSIFADDR, &mut ifr);
        let mut ifr = ifreq(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
        ioctl(&sock, libc::SIOCSIFNETMASK, &mut ifr);
        let mut ifr = ifreq(name);
        ioctl(&sock, libc::SIOCGIFFLAGS, &mut ifr);
        // SAFETY: SIOCGIFFLAGS filled in `ifru_flags`.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut ifr);
    }

    /// Waits until `fd` is readable; `false` after `timeout`.
    pub fn wait_readable(fd: i32, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd, alive for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            if n > 0 {
                return true;
            }
            if left.is_zero() {
                return false;
            }
        }
    }

    /// An ARP packet in an Ethernet frame (RFC 826): `op` 1 request, 2 reply.
    pub fn arp_frame(
        op: u16,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        sender_ip: Ipv4Addr,
        target_mac: [u8; 6],
        target_ip: Ipv4Addr,
    ) -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&0x0806u16.to_be_bytes()); // EtherType ARP
        f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
        f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
        f.extend_from_slice(&[6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&sender_ip.octets());
        f.extend_from_slice(&target_mac);
        f.extend_from_slice(&target_ip.octets());
        f
    }

    /// `(op, sender MAC, sender IP, target IP)` if `frame` (no virtio-net header) is ARP.
    pub fn parse_arp(frame: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
        if frame.len() < 42 || frame[12..14] != [0x08, 0x06] {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        Some((
            u16::from_be_bytes([frame[20], frame[21]]),
            frame[22..28].try_into().ok()?,
            ip(28),
            ip(38),
        ))
    }
}

#[cfg(test)]
mod tests;
