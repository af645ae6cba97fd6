//! The virtio block device (virtio 1.2 §5.2) on a host file.
//!
//! One request queue of [`QUEUE_SIZE`] entries. Each request is a descriptor chain laid out the
//! way every Linux driver sends it (§5.2.6): a device-readable 16-byte header (`type`,
//! `reserved`, `sector`), the data descriptors, and a last device-writable descriptor whose first
//! byte receives the status. Supported: `VIRTIO_BLK_T_IN`, `OUT`, `FLUSH` and `GET_ID`; any other
//! type is answered `VIRTIO_BLK_S_UNSUPP`.
//!
//! Data moves between guest memory and the file with `preadv`/`pwritev` straight on the guest
//! pages: no bounce buffer. A malformed chain is answered `VIRTIO_BLK_S_IOERR` when its status
//! byte can be written, and otherwise returned with a used length of 0; the device carries on.
//!
//! Here: the [`Block`] device, its features and configuration space; running one request is in
//! `request.rs`.

mod request;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

use super::queue;
use super::{
    feature_bit, ActivateError, ActiveQueue, QueueRun, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size of the `sector` field and of `capacity` (virtio 1.2 §5.2.4, §5.2.6), always 512
/// whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// `blk_size` in the configuration space (§5.2.4): the optimal I/O block size the guest uses.
const BLK_SIZE: u32 = 512;

/// The logical block size announced for `file` (`VIRTIO_BLK_F_BLK_SIZE`): a host block
/// device's own (`BLKSSZGET`: a 4 KiB-sector device makes the guest use 4 KiB blocks, as it
/// must), 512 bytes for a regular file.
fn logical_block_size(file: &File) -> std::io::Result<u32> {
    use std::os::unix::fs::FileTypeExt;
    if !file.metadata()?.file_type().is_block_device() {
        return Ok(BLK_SIZE);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `size`, which lives across the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::BLKSSZGET,
            &mut size,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && *s >= BLK_SIZE)
        .ok_or_else(|| std::io::Error::other(format!("logical block size {size}")))
}
/// `seg_max` (§5.2.4): the most data segments in one request. A chain holds the header and
/// the status besides; without indirect descriptors it must fit in the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Length of the 20-byte device ID string of `GET_ID` (§5.2.6), NUL-padded.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Length of `struct virtio_blk_req`'s header: `le32 type; le32 reserved; le64 sector` (§5.2.6).
const REQUEST_HEADER_LEN: u32 = 16;

/// `struct virtio_blk_config` (virtio 1.2 §5.2.4), up to `blk_size`; later fields read as 0:
/// `capacity` at 0 (le64), `size_max` at 8, `seg_max` at 12, `geometry` at 16, `blk_size` at 20.
const CONFIG_LEN: usize = 24;
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;
/// How the device names itself in log messages.
const LOG_NAME: &str = "virtio-blk";

/// Errors from creating a [`Block`] device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The size of the disk image could not be found.
    #[error("cannot find the size of the disk image")]
    Size(#[source] io::Error),
    /// The metadata of the disk image (for its default ID) could not be read.
    #[error("cannot read the metadata of the disk image")]
    Metadata(#[source] io::Error),
    /// The ID does not fit the 20 bytes of `GET_ID`.
    #[error("block device ID {id:?} is {} bytes long; at most {ID_BYTES} fit", .id.len())]
    IdTooLong {
        /// The ID given.
        id: String,
    },
}

/// Counters of a [`Block`] device's work, shared with whoever holds [`Block::counters`].
#[derive(Debug, Default)]
pub struct BlockCounters {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    notifications: AtomicU64,
}

/// A copy of [`BlockCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Descriptor chains taken from the queue.
    pub requests: u64,
    /// Successful `VIRTIO_BLK_T_IN` requests.
    pub reads: u64,
    /// Successful `VIRTIO_BLK_T_OUT` requests.
    pub writes: u64,
    /// Successful `VIRTIO_BLK_T_FLUSH` requests.
    pub flushes: u64,
    /// Bytes read from the disk image into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the disk image.
    pub bytes_written: u64,
    /// Requests answered `IOERR` or `UNSUPP`, or returned without a status.
    pub errors: u64,
    /// Used buffer notifications sent to the guest.
    pub notifications: u64,
}

impl BlockCounters {
    /// The current values.
    pub fn snapshot(&self) -> BlockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStats {
            requests: get(&self.requests),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            notifications: get(&self.notifications),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The disk image and what requests need to know about it.
struct Disk {
    file: File,
    /// Size in 512-byte sectors.
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    /// `VIRTIO_BLK_F_FLUSH` not negotiated: the driver never flushes, so every write is made
    /// durable before it completes (§5.2.5).
    write_through: bool,
    /// An `fdatasync` failed: the kernel may have dropped the dirty pages it could not write,
    /// so a later one that succeeds proves nothing. Every flush after it fails too, for as long
    /// as the file is open (QEMU's file driver does the same), and the guest knows its data
    /// may be gone.
    sync_failed: AtomicBool,
    /// Tests: the next `fdatasync` fails with this error, as a disk's would.
    #[cfg(test)]
    fail_next_sync: std::sync::Mutex<Option<io::ErrorKind>>,
    counters: Arc<BlockCounters>,
}

/// A virtio-blk device (virtio 1.2 §5.2) backed by a file or a host block device.
pub struct Block {
    disk: Disk,
    avail_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<ActiveQueue>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.disk.capacity)
            .field("read_only", &self.disk.read_only)
            .field("id", &String::from_utf8_lossy(&self.disk.id))
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

impl Block {
    /// Creates a block device on `file` (opened read-only by the caller when `read_only`).
    ///
    /// The capacity is the file's size in whole 512-byte sectors (a trailing partial sector is
    /// not visible). `id` is what `GET_ID` answers (at most 20 bytes); by default it is made
    /// from the file's inode and device numbers, so it stays the same across boots.
    pub fn new(mut file: File, read_only: bool, id: Option<String>) -> Result<Self, BlockError> {
        // Seeking to the end works for regular files and host block devices alike (whose
        // metadata length is 0). The file position is not used otherwise: I/O is positional.
        let size = file.seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        if size % SECTOR_SIZE != 0 {
            warn!(
                "virtio-blk: disk image size {size} is not a multiple of {SECTOR_SIZE}; \
                 the last {} bytes are not visible",
                size % SECTOR_SIZE
            );
        }
        let capacity = size / SECTOR_SIZE;
        let id = match id {
            Some(id) if id.len() > ID_BYTES => return Err(BlockError::IdTooLong { id }),
            Some(id) => id,
            None => {
                let meta = file.metadata().map_err(BlockError::Metadata)?;
                format!("{:x}-{:x}", meta.ino(), meta.dev())
            }
        };
        let mut id_bytes = [0u8; ID_BYTES];
        for (dst, src) in id_bytes.iter_mut().zip(id.bytes()) {
            *dst = src;
        }

        let mut avail_features = feature_bit(VIRTIO_F_VERSION_1)
            | feature_bit(VIRTIO_RING_F_EVENT_IDX)
            | feature_bit(VIRTIO_RING_F_INDIRECT_DESC)
            | feature_bit(VIRTIO_BLK_F_FLUSH)
            | feature_bit(VIRTIO_BLK_F_SEG_MAX)
            | feature_bit(VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            avail_features |= feature_bit(VIRTIO_BLK_F_RO);
        }

        let blk_size = logical_block_size(&file).map_err(BlockError::Metadata)?;
        let mut config = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 3] = [
            (CONFIG_CAPACITY, &capacity.to_le_bytes()),
            (CONFIG_SEG_MAX, &SEG_MAX.to_le_bytes()),
            (CONFIG_BLK_SIZE, &blk_size.to_le_bytes()),
        ];
        for (offset, bytes) in fields {
            if let Some(dst) = config.get_mut(offset..offset + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }

        Ok(Self {
            disk: Disk {
                file,
                capacity,
                read_only,
                id: id_bytes,
                write_through: false,
                sync_failed: AtomicBool::new(false),
                #[cfg(test)]
                fail_next_sync: Default::default(),
                counters: Arc::default(),
            },
            avail_features,
            config,
            active: None,
        })
    }

    /// The disk size in 512-byte sectors (`capacity` in the configuration space).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Whether writes are refused (`VIRTIO_BLK_F_RO`).
    #[cfg(test)]
    pub(crate) fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The 20-byte ID that `GET_ID` returns, NUL-padded.
    #[cfg(test)]
    pub(crate) fn id(&self) -> &[u8; ID_BYTES] {
        &self.disk.id
    }

    /// The device's counters, live (they keep counting after this call).
    pub fn counters(&self) -> Arc<BlockCounters> {
        Arc::clone(&self.disk.counters)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
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
        ActiveQueue::start(&mut self.active, mem, queues, interrupt)?;
        self.disk.write_through = acked_features & feature_bit(VIRTIO_BLK_F_FLUSH) == 0;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.disk.write_through = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Requests run to completion inside `process_queue`, so the queue's own positions are
    /// those of finished requests.
    fn queue_states(&self) -> Vec<QueueState> {
        ActiveQueue::states(&self.active)
    }

    /// The standard loop (`queue::process_chains`) over the request queue, then one used
    /// buffer notification if the driver wants it.
    fn process_queue(&mut self, queue_index: usize) -> QueueRun {
        let Self { disk, active, .. } = self;
        let Some(active) = active.as_mut().filter(|_| queue_index == 0) else {
            return QueueRun::default();
        };
        let mem = &active.mem;
        let run = queue::process_chains(&mut active.queue, mem, LOG_NAME, |chain| {
            disk.execute_chain(mem, chain)
        });
        let notified = run.added && queue::needs_notification(&mut active.queue, mem, LOG_NAME);
        if notified {
            queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
            BlockCounters::add(&disk.counters.notifications, 1);
        }
        QueueRun {
            notified,
            more: run.more,
        }
    }
}
