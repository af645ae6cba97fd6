//! The file system device, virtio-fs (virtio 1.2 §5.11, device ID 26), as a vhost-user front
//! end: the FUSE requests in its queues are served by a separate back end (`virtiofsd`) that
//! reads the rings in guest memory itself, through a Unix socket it was told about and the
//! guest memory file descriptors this device sends it (guest RAM must be a shared memfd).
//!
//! Queues: one high-priority queue and [`REQUEST_QUEUES`] request queue(s). Configuration
//! space (§5.11.4): the mount tag (36 bytes, NUL-padded) and `num_request_queues`.
//!
//! The device talks to the back end only on the event loop's thread: the driver's `DRIVER_OK`
//! (on a vCPU thread, whose seccomp filter allows no socket I/O) only records the queues; the
//! first queue notification sets the back end up (memory table, then each ring, its kick and
//! call eventfds) and passes the notification on. After that a notification is passed on by
//! writing the queue's kick eventfd, and the back end's call eventfds are this device's
//! backend descriptors: each one read becomes a used-buffer interrupt for the guest (which is
//! what QEMU does for vhost-user over virtio-mmio, whose interrupt status the guest reads).
//!
//! The back end's socket is watched too (one more backend descriptor): the back end never
//! writes on it unasked, so when it becomes readable the back end has gone away (virtiofsd
//! killed, say). The device then pulls its [`StopTrigger`]: a VM whose file system is gone
//! stops with an error rather than leave its guest waiting for answers that never come. A
//! back end that fails at set-up is reported the same way.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use log::warn;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    feature_bit, ActivateError, QueueRun, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::power::StopTrigger;

/// virtio-fs's device ID (virtio 1.2 §5.11.1).
pub const VIRTIO_ID_FS: u32 = 26;
/// Request queues besides the high-priority one.
pub const REQUEST_QUEUES: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// The mount tag's length in the configuration space (§5.11.4), NUL-padded.
pub const TAG_LEN: usize = 36;
/// `struct virtio_fs_config`: `tag[36]`, `le32 num_request_queues`.
const CONFIG_LEN: usize = TAG_LEN + 4;
const LOG_NAME: &str = "virtio-fs";
/// The features this front end passes on from the back end (the rest it handles itself or
/// does not offer).
const PASSED_ON_FEATURES: u64 = feature_bit(VIRTIO_F_VERSION_1)
    | feature_bit(VIRTIO_RING_F_EVENT_IDX)
    | feature_bit(VIRTIO_RING_F_INDIRECT_DESC);

/// Why a virtio-fs device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("the mount tag {0:?} is empty or longer than {TAG_LEN} bytes")]
    Tag(String),
    #[error("the vhost-user back end does not answer as one should ({what})")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the vhost-user back end lacks VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The queues and the interrupt from `DRIVER_OK` on; `ready` once the back end has them.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
    features: u64,
    ready: bool,
}

/// A virtio-fs device served by a vhost-user back end.
pub struct Fs {
    config: [u8; CONFIG_LEN],
    queue_sizes: Vec<u16>,
    avail_features: u64,
    /// The back end offers VHOST_USER_F_PROTOCOL_FEATURES (then rings start disabled).
    protocol_features: bool,
    frontend: Frontend,
    /// The back end's socket, watched for its going away.
    socket_fd: RawFd,
    /// Pulled once when the back end goes away or fails.
    gone: StopTrigger,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    active: Option<Active>,
    /// The back end failed: the device does nothing more.
    broken: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag())
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

fn backend(what: &'static str) -> impl Fn(vhost::Error) -> FsError {
    move |source| FsError::Backend { what, source }
}

impl Fs {
    /// A device for the file system `tag` that the back end on `socket` serves: takes
    /// ownership of the back end and reads its features. `gone` is pulled if the back end
    /// goes away or fails.
    pub fn new(tag: &str, socket: UnixStream, gone: StopTrigger) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let queues = 1 + REQUEST_QUEUES;
        let socket_fd = socket.as_raw_fd();
        let mut frontend = Frontend::from_stream(socket, queues as u64);
        frontend
            .set_owner()
            .map_err(backend("VHOST_USER_SET_OWNER"))?;
        let features = frontend
            .get_features()
            .map_err(backend("VHOST_USER_GET_FEATURES"))?;
        if features & feature_bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NoVersion1);
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol_features = features & protocol_bit != 0;
        if protocol_features {
            // The protocol features vmm needs: none beyond the base protocol.
            frontend
                .set_features(protocol_bit)
                .map_err(backend("VHOST_USER_SET_FEATURES"))?;
            let offered = frontend
                .get_protocol_features()
                .map_err(backend("VHOST_USER_GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::empty())
                .map_err(backend("VHOST_USER_SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&(REQUEST_QUEUES as u32).to_le_bytes());
        let eventfds = || {
            (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(FsError::EventFd)
        };
        Ok(Fs {
            config,
            queue_sizes: vec![QUEUE_SIZE; queues],
            avail_features: features & PASSED_ON_FEATURES,
            protocol_features,
            frontend,
            socket_fd,
            gone,
            kicks: eventfds()?,
            calls: eventfds()?,
            active: None,
            broken: false,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> String {
        let end = self.config[..TAG_LEN]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&self.config[..end]).into_owned()
    }

    /// Gives the back end the memory table and every ring (on the event loop's thread).
    fn set_up_backend(&mut self) -> Result<(), FsError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mut features = active.features;
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(backend("VHOST_USER_SET_FEATURES"))?;
        let regions = active
            .mem
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(backend("a guest memory region without a file"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(backend("VHOST_USER_SET_MEM_TABLE"))?;
        for (index, queue) in active.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            let host = |addr: GuestAddress| {
                active
                    .mem
                    .get_host_address(addr)
                    .map(|p| p as u64)
                    .map_err(|_| FsError::Backend {
                        what: "a ring outside guest memory",
                        source: vhost::Error::InvalidGuestMemory,
                    })
            };
            let ring = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(GuestAddress(queue.desc_table()))?,
                used_ring_addr: host(GuestAddress(queue.used_ring()))?,
                avail_ring_addr: host(GuestAddress(queue.avail_ring()))?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, queue.size())
                .map_err(backend("VHOST_USER_SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &ring)
                .map_err(backend("VHOST_USER_SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, queue.next_avail())
                .map_err(backend("VHOST_USER_SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, &self.calls[index])
                .map_err(backend("VHOST_USER_SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, &self.kicks[index])
                .map_err(backend("VHOST_USER_SET_VRING_KICK"))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(backend("VHOST_USER_SET_VRING_ENABLE"))?;
            }
        }
        active.ready = true;
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
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
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                actual: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            features: acked_features,
            ready: false,
        });
        Ok(())
    }

    /// The back end keeps its rings until the device is started again (the next set-up
    /// gives it new ones); a vCPU thread cannot talk to it.
    fn reset(&mut self) {
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }

    fn process_queue(&mut self, queue_index: usize) -> QueueRun {
        if self.broken {
            return QueueRun::default();
        }
        let Some(active) = self.active.as_ref() else {
            return QueueRun::default();
        };
        if !active.ready {
            if let Err(e) = self.set_up_backend() {
                warn!(
                    "{LOG_NAME} {:?}: cannot start the back end: {e}",
                    self.tag()
                );
                self.broken = true;
                self.gone.request();
                return QueueRun::default();
            }
        }
        if let Some(kick) = self.kicks.get(queue_index) {
            if let Err(e) = kick.write(1) {
                warn!("{LOG_NAME}: cannot notify the back end: {e}");
            }
        }
        QueueRun::default()
    }

    /// Each queue's call eventfd, then the back end's socket.
    fn backend_fds(&self) -> Vec<RawFd> {
        let calls = self.calls.iter().map(AsRawFd::as_raw_fd);
        calls.chain([self.socket_fd]).collect()
    }

    /// The back end put buffers in a used ring (it signalled queue `index`'s call eventfd), or
    /// its socket became readable: it went away.
    fn process_backend(&mut self, index: usize) {
        if index == self.calls.len() {
            if !self.broken && self.backend_gone() {
                warn!(
                    "{LOG_NAME} {:?}: the vhost-user back end went away",
                    self.tag()
                );
                self.broken = true;
                self.gone.request();
            }
            return;
        }
        let Some(call) = self.calls.get(index) else {
            return;
        };
        let _ = call.read();
        if let Some(active) = self.active.as_ref() {
            super::queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        }
    }

    fn backend_wanted(&self, index: usize) -> bool {
        if self.broken {
            return false;
        }
        index == self.calls.len() || self.active.as_ref().is_some_and(|a| a.ready)
    }
}

impl Fs {
    /// Whether the back end's socket is closed (or broken): it never writes unasked, so
    /// readable means an end of file or an error.
    fn backend_gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer that lives for the call, on a socket this device owns
        // (through its `Frontend`); MSG_PEEK leaves anything there for the next reader.
        let n = unsafe {
            libc::recv(
                self.socket_fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(test)]
mod tests;
