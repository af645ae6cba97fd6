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

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileSlice};

use super::queue;
use super::{
    feature_bit, ActivateError, VirtioDevice, VirtioInterrupt, IOV_MAX, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size of the `sector` field and of `capacity` (virtio 1.2 §5.2.4, §5.2.6), always 512
/// whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// `blk_size` in the configuration space (§5.2.4): the optimal I/O block size the guest uses.
const BLK_SIZE: u32 = 512;
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

/// Why a request failed; the guest sees only the status byte, the log (debug level) sees this.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the chain has no request header")]
    MissingHeader,
    #[error("the request header is in a device-writable descriptor")]
    HeaderWritable,
    #[error("the request header descriptor holds {0} bytes, less than 16")]
    HeaderTooShort(u32),
    #[error("cannot read the request header")]
    HeaderAccess(#[source] GuestMemoryError),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("a data descriptor of a type {0} request has the wrong direction")]
    DataDirection(u32),
    #[error("data length {0} is not a multiple of 512")]
    DataLength(u64),
    #[error("{len} bytes at sector {sector} do not fit a disk of {capacity} sectors")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("a data buffer is not in guest memory")]
    DataAccess(#[source] GuestMemoryError),
    #[error("GET_ID without a buffer for the ID")]
    NoIdBuffer,
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("I/O error on the disk image")]
    Io(#[source] io::Error),
}

impl RequestError {
    /// The status byte for the guest (§5.2.6).
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
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
    counters: Arc<BlockCounters>,
}

/// The queue and what it needs, from `DRIVER_OK` to reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-blk device (virtio 1.2 §5.2) backed by a file or a host block device.
pub struct Block {
    disk: Disk,
    avail_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
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

        let mut config = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 3] = [
            (CONFIG_CAPACITY, &capacity.to_le_bytes()),
            (CONFIG_SEG_MAX, &SEG_MAX.to_le_bytes()),
            (CONFIG_BLK_SIZE, &BLK_SIZE.to_le_bytes()),
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
                counters: Arc::default(),
            },
            avail_features,
            config,
            active: None,
        })
    }

    /// The disk size in 512-byte sectors (`capacity` in the configuration space).
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// Whether writes are refused (`VIRTIO_BLK_F_RO`).
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The 20-byte ID that `GET_ID` returns, NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
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

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field we expose is read-only (`wce` would need VIRTIO_BLK_F_CONFIG_WCE).
        debug!(
            "virtio-blk: ignoring {}-byte config write at {offset:#x}",
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
        let queue = match <[Queue; 1]>::try_from(queues) {
            Ok([queue]) => queue,
            Err(_) => {
                return Err(ActivateError::QueueCount {
                    expected: 1,
                    actual,
                })
            }
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady { index: 0 });
        }
        self.disk.write_through = acked_features & feature_bit(VIRTIO_BLK_F_FLUSH) == 0;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.disk.write_through = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The standard loop ([`queue::process_chains`]) over the request queue, then one used
    /// buffer notification if the driver wants it.
    fn process_queue(&mut self, queue_index: usize) -> bool {
        let Self { disk, active, .. } = self;
        let Some(active) = active.as_mut().filter(|_| queue_index == 0) else {
            return false;
        };
        let mem = &active.mem;
        let added = queue::process_chains(&mut active.queue, mem, LOG_NAME, |chain| {
            disk.execute_chain(mem, chain)
        });
        if !added || !queue::needs_notification(&mut active.queue, mem, LOG_NAME) {
            return false;
        }
        queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        BlockCounters::add(&disk.counters.notifications, 1);
        true
    }
}

/// Reads the request header: `(type, sector)` (§5.2.6).
fn read_header(mem: &GuestMemoryMmap, header: &Descriptor) -> Result<(u32, u64), RequestError> {
    if header.is_write_only() {
        return Err(RequestError::HeaderWritable);
    }
    if header.len() < REQUEST_HEADER_LEN {
        return Err(RequestError::HeaderTooShort(header.len()));
    }
    let raw: [u8; REQUEST_HEADER_LEN as usize] = mem
        .read_obj(header.addr())
        .map_err(RequestError::HeaderAccess)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    Ok((
        u32::from_le_bytes([t0, t1, t2, t3]),
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    ))
}

/// The guest memory behind `data`, one slice per contiguous host range.
fn guest_slices<'m>(
    mem: &'m GuestMemoryMmap,
    data: &[Descriptor],
) -> Result<Vec<VolatileSlice<'m>>, RequestError> {
    let mut slices = Vec::with_capacity(data.len());
    for desc in data {
        // A descriptor length is a u32, so it fits a usize on the 64-bit hosts KVM runs on.
        let len = usize::try_from(desc.len()).map_err(|_| {
            RequestError::DataAccess(GuestMemoryError::InvalidGuestAddress(desc.addr()))
        })?;
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            slices.push(slice.map_err(RequestError::DataAccess)?);
        }
    }
    Ok(slices)
}

/// Moves all of `iovs` from (`write == false`: `preadv`) or to (`pwritev`) `file` at `offset`,
/// going on after short transfers and `EINTR`.
///
/// # Safety
///
/// Every `iovec` must describe memory that stays valid (and, for a read, writable) for the
/// whole call.
unsafe fn transfer_all(
    file: &File,
    iovs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    let mut first = 0;
    while first < iovs.len() {
        let batch = iovs
            .get(first..iovs.len().min(first + IOV_MAX))
            .unwrap_or_default();
        let file_offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // `batch` holds at most IOV_MAX (1024) entries, so its length fits a c_int.
        let count = batch.len() as libc::c_int;
        let done = if write {
            // SAFETY: the caller guarantees every iovec in `batch` points at readable memory
            // that stays valid during the call; `batch` outlives the call and `count` is its
            // length; the file descriptor is owned by `file`, borrowed for the call.
            unsafe { libc::pwritev(file.as_raw_fd(), batch.as_ptr(), count, file_offset) }
        } else {
            // SAFETY: as above, and the caller guarantees the memory is writable; the kernel
            // writes at most the length of each iovec.
            unsafe { libc::preadv(file.as_raw_fd(), batch.as_ptr(), count, file_offset) }
        };
        let mut done = match usize::try_from(done) {
            Ok(0) if write => return Err(io::ErrorKind::WriteZero.into()),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
        };
        offset += done as u64;
        // Skip the buffers the call filled and trim the one it filled in part.
        while done > 0 {
            let Some(iov) = iovs.get_mut(first) else {
                break;
            };
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
        // Zero-length buffers would make the next call transfer nothing.
        while iovs.get(first).is_some_and(|iov| iov.iov_len == 0) {
            first += 1;
        }
    }
    Ok(())
}

impl Disk {
    /// Runs one request and returns the used length for the used ring: the bytes written to
    /// device-writable descriptors (data and status). A chain with nowhere to put the status
    /// (broken, or whose last descriptor is not a device-writable byte of guest memory) is not
    /// run at all and comes back with length 0.
    fn execute_chain(
        &self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        BlockCounters::add(&self.counters.requests, 1);
        let mut descriptors = Vec::new();
        let mut complete = false;
        // virtio-queue stops a chain after as many descriptors as the queue (or indirect
        // table) holds, at a descriptor it cannot read, or past 4 GiB in all: the last
        // descriptor then still says NEXT.
        for desc in chain {
            complete = !desc.has_next();
            descriptors.push(desc);
        }
        let status = match descriptors.split_last() {
            Some((status, _)) if !complete => {
                debug!(
                    "virtio-blk: broken descriptor chain (loop or bad descriptor) ending at {:#x}",
                    status.addr().0
                );
                None
            }
            Some((status, _))
                if !status.is_write_only()
                    || status.len() == 0
                    || !mem.address_in_range(status.addr()) =>
            {
                debug!("virtio-blk: the last descriptor cannot take a status byte");
                None
            }
            None => {
                debug!("virtio-blk: empty descriptor chain");
                None
            }
            Some(last) => Some(last),
        };
        let Some((status, request)) = status else {
            BlockCounters::add(&self.counters.errors, 1);
            return 0;
        };

        let (status_byte, written) = match self.execute(mem, request) {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => {
                // A host I/O error is the operator's business; anything else is the guest's.
                if let RequestError::Io(source) = &e {
                    warn!("virtio-blk: {e}: {source}");
                } else {
                    debug!("virtio-blk: request failed: {e}");
                }
                BlockCounters::add(&self.counters.errors, 1);
                (e.status(), 0)
            }
        };
        match mem.write_obj(status_byte, status.addr()) {
            Ok(()) => written.saturating_add(1),
            Err(e) => {
                debug!("virtio-blk: cannot write the status byte: {e}");
                written
            }
        }
    }

    /// Runs the request in `request` (header and data descriptors); returns the number of
    /// bytes written to guest memory.
    fn execute(&self, mem: &GuestMemoryMmap, request: &[Descriptor]) -> Result<u32, RequestError> {
        let (header, data) = request.split_first().ok_or(RequestError::MissingHeader)?;
        let (request_type, sector) = read_header(mem, header)?;
        match request_type {
            VIRTIO_BLK_T_IN => self.read(mem, request_type, sector, data),
            VIRTIO_BLK_T_OUT => self.write(mem, request_type, sector, data).map(|()| 0),
            VIRTIO_BLK_T_FLUSH => {
                // §5.2.6: FLUSH carries no data and ignores `sector`.
                self.file.sync_data().map_err(RequestError::Io)?;
                BlockCounters::add(&self.counters.flushes, 1);
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, request_type, data),
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Checks that every data descriptor goes the right way for the request (device-writable
    /// for a read from the disk) and returns their total length.
    fn data_len(
        request_type: u32,
        data: &[Descriptor],
        device_writes: bool,
    ) -> Result<u64, RequestError> {
        if data.iter().any(|d| d.is_write_only() != device_writes) {
            return Err(RequestError::DataDirection(request_type));
        }
        Ok(data.iter().map(|d| u64::from(d.len())).sum())
    }

    /// The byte offset of `len` bytes at `sector`, if they lie on the disk (§5.2.6.1: not a
    /// multiple of 512, or beyond `capacity`, is an error).
    fn disk_offset(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::DataLength(len));
        }
        let out_of_range = || RequestError::OutOfRange {
            sector,
            len,
            capacity: self.capacity,
        };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.capacity * SECTOR_SIZE {
            return Err(out_of_range());
        }
        Ok(offset)
    }

    /// Moves the data of `data` between guest memory and the disk at byte `offset`: straight
    /// from (`to_disk`) or into the guest pages, with one `pwritev`/`preadv` for up to 1024
    /// contiguous pieces.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        offset: u64,
        to_disk: bool,
    ) -> Result<(), RequestError> {
        let slices = guest_slices(mem, data)?;
        let result = if to_disk {
            // Hold the pointer guards for as long as the kernel may use the pointers.
            let guards: Vec<PtrGuard> = slices.iter().map(VolatileSlice::ptr_guard).collect();
            let mut iovs: Vec<libc::iovec> = guards
                .iter()
                .map(|g| libc::iovec {
                    iov_base: g.as_ptr().cast_mut().cast(),
                    iov_len: g.len(),
                })
                .collect();
            // SAFETY: each iovec is a `VolatileSlice` of guest memory, bounds-checked by
            // vm-memory and mapped for the life of `mem` (which outlives this call); `guards`
            // keeps the pointers valid until the transfer is over. pwritev only reads them.
            unsafe { transfer_all(&self.file, &mut iovs, offset, true) }
        } else {
            let guards: Vec<PtrGuardMut> =
                slices.iter().map(VolatileSlice::ptr_guard_mut).collect();
            let mut iovs: Vec<libc::iovec> = guards
                .iter()
                .map(|g| libc::iovec {
                    iov_base: g.as_ptr().cast(),
                    iov_len: g.len(),
                })
                .collect();
            // SAFETY: as above; guest memory is mapped read-write, so preadv may fill it.
            // (GuestMemoryMmap<()> tracks no dirty pages; with a bitmap they would be marked.)
            unsafe { transfer_all(&self.file, &mut iovs, offset, false) }
        };
        result.map_err(RequestError::Io)
    }

    /// `VIRTIO_BLK_T_IN`: disk → guest.
    fn read(
        &self,
        mem: &GuestMemoryMmap,
        request_type: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<u32, RequestError> {
        let len = Self::data_len(request_type, data, true)?;
        let offset = self.disk_offset(sector, len)?;
        self.transfer(mem, data, offset, false)?;
        BlockCounters::add(&self.counters.reads, 1);
        BlockCounters::add(&self.counters.bytes_read, len);
        // The chain is at most 4 GiB (virtio-queue enforces it), so its data fits a u32.
        Ok(u32::try_from(len).unwrap_or(u32::MAX))
    }

    /// `VIRTIO_BLK_T_OUT`: guest → disk.
    fn write(
        &self,
        mem: &GuestMemoryMmap,
        request_type: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<(), RequestError> {
        if self.read_only {
            // §5.2.6.2: a read-only device fails writes with IOERR.
            return Err(RequestError::ReadOnly);
        }
        let len = Self::data_len(request_type, data, false)?;
        let offset = self.disk_offset(sector, len)?;
        self.transfer(mem, data, offset, true)?;
        if self.write_through {
            self.file.sync_data().map_err(RequestError::Io)?;
        }
        BlockCounters::add(&self.counters.writes, 1);
        BlockCounters::add(&self.counters.bytes_written, len);
        Ok(())
    }

    /// `VIRTIO_BLK_T_GET_ID`: the 20-byte ID into the device-writable data buffers (§5.2.6).
    fn get_id(
        &self,
        mem: &GuestMemoryMmap,
        request_type: u32,
        data: &[Descriptor],
    ) -> Result<u32, RequestError> {
        Self::data_len(request_type, data, true)?;
        if data.is_empty() {
            return Err(RequestError::NoIdBuffer);
        }
        let mut id: &[u8] = &self.id;
        let mut written = 0u32;
        for desc in data {
            let n = id
                .len()
                .min(usize::try_from(desc.len()).unwrap_or(usize::MAX));
            let (now, rest) = id.split_at(n);
            mem.write_slice(now, desc.addr())
                .map_err(RequestError::DataAccess)?;
            // n <= ID_BYTES (20).
            written += n as u32;
            id = rest;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::test_utils::{r, w, Buf, CountingInterrupt, GuestQueue};

    /// Two adjacent 2 MiB regions, so a buffer can straddle the boundary at 0x20_0000.
    const REGION: u64 = 0x20_0000;
    const MEM_END: u64 = 2 * REGION;
    const HDR: u64 = 0x1_0000;
    const STATUS: u64 = 0x1_1000;
    const INDIRECT: u64 = 0x3_0000;
    const DATA: u64 = 0x4_0000;
    const DATA2: u64 = 0x8_0000;
    const DATA3: u64 = 0xc_0000;
    const SECTORS: u64 = 64;
    const ALL_FEATURES_BUT_EVENT_IDX: u64 = !(1 << VIRTIO_RING_F_EVENT_IDX);

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .unwrap()
    }

    /// Byte `i` of the initial disk image: differs between neighbouring bytes and sectors.
    fn pattern(i: u64) -> u8 {
        ((i % 251) as u8) ^ ((i / 512) as u8).rotate_left(3)
    }

    fn disk_image(sectors: u64) -> TempFile {
        let tmp = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..sectors * SECTOR_SIZE).map(pattern).collect();
        tmp.as_file().write_all_at(&bytes, 0).unwrap();
        tmp
    }

    fn open(tmp: &TempFile, read_only: bool) -> File {
        File::options()
            .read(true)
            .write(!read_only)
            .open(tmp.as_path())
            .unwrap()
    }

    struct Harness<'a> {
        mem: &'a GuestMemoryMmap,
        q: GuestQueue<'a>,
        block: Block,
        irq: Arc<CountingInterrupt>,
        tmp: TempFile,
    }

    impl<'a> Harness<'a> {
        fn with(mem: &'a GuestMemoryMmap, tmp: TempFile, read_only: bool, features: u64) -> Self {
            let block =
                Block::new(open(&tmp, read_only), read_only, Some("test-disk".into())).unwrap();
            let mut h = Self {
                mem,
                q: GuestQueue::new(mem, GuestAddress(0), QUEUE_SIZE),
                block,
                irq: Arc::default(),
                tmp,
            };
            h.activate(features);
            h
        }

        fn new(mem: &'a GuestMemoryMmap) -> Self {
            Self::with(mem, disk_image(SECTORS), false, ALL_FEATURES_BUT_EVENT_IDX)
        }

        fn activate(&mut self, features: u64) {
            let mut queue = self.q.queue();
            let acked = self.block.avail_features() & features;
            queue.set_event_idx(acked & feature_bit(VIRTIO_RING_F_EVENT_IDX) != 0);
            self.block
                .activate(self.mem.clone(), vec![queue], acked, self.irq.clone())
                .unwrap();
        }

        fn header(&self, request_type: u32, sector: u64) {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&request_type.to_le_bytes());
            raw[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // reserved: ignored
            raw[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        }

        /// Offers `bufs` as one chain, runs the queue and returns the used length; the chain
        /// must come back, alone.
        fn submit(&mut self, bufs: &[Buf]) -> u32 {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let head = self.q.add_chain(bufs);
            self.block.process_queue(0);
            let used = self.q.take_used();
            assert_eq!(used.len(), 1, "{used:?}");
            assert_eq!(used[0].0, u32::from(head));
            used[0].1
        }

        /// A request whose last descriptor is the status byte at `STATUS`; returns
        /// `(used length, status byte)`.
        fn request(&mut self, request_type: u32, sector: u64, data: &[Buf]) -> (u32, u8) {
            self.header(request_type, sector);
            let mut bufs = vec![r(HDR, 16)];
            bufs.extend_from_slice(data);
            bufs.push(w(STATUS, 1));
            let len = self.submit(&bufs);
            (len, self.status())
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn fill(&self, addr: u64, bytes: &[u8]) {
            self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        }

        fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }

        /// The disk image, or its first MiB (all that tests write; some images are huge
        /// sparse files).
        fn disk(&self) -> Vec<u8> {
            let len = self.tmp.as_file().metadata().unwrap().len().min(1 << 20);
            let mut bytes = vec![0u8; len as usize];
            self.tmp.as_file().read_exact_at(&mut bytes, 0).unwrap();
            bytes
        }

        fn stats(&self) -> BlockStats {
            self.block.counters().snapshot()
        }

        /// A valid one-sector read still works and returns the right bytes.
        fn assert_still_works(&mut self) {
            self.fill(DATA, &[0u8; 512]);
            let (len, status) = self.request(VIRTIO_BLK_T_IN, 7, &[w(DATA, 512)]);
            assert_eq!((len, status), (513, VIRTIO_BLK_S_OK as u8));
            assert_eq!(self.guest(DATA, 512), self.disk()[7 * 512..8 * 512]);
        }
    }

    fn image_bytes(range: std::ops::Range<u64>) -> Vec<u8> {
        range.map(pattern).collect()
    }

    #[test]
    fn read_copies_sectors_into_guest_memory() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        h.fill(DATA, &[0xaa; 1024 + 16]);
        let (len, status) = h.request(VIRTIO_BLK_T_IN, 3, &[w(DATA, 1024)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(len, 1024 + 1, "data bytes plus the status byte");
        assert_eq!(h.guest(DATA, 1024), image_bytes(3 * 512..5 * 512));
        assert_eq!(
            h.guest(DATA + 1024, 16),
            [0xaa; 16],
            "nothing past the buffer"
        );
        let stats = h.stats();
        assert_eq!(
            (stats.requests, stats.reads, stats.bytes_read),
            (1, 1, 1024)
        );
        assert_eq!((stats.errors, stats.notifications), (0, 1));
        assert_eq!(h.irq.used(), 1);
    }

    #[test]
    fn write_reaches_the_disk_and_nothing_else() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 1) as u8).collect();
        h.fill(DATA, &data);
        let before = h.disk();
        let (len, status) = h.request(VIRTIO_BLK_T_OUT, 5, &[r(DATA, 1024)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let after = h.disk();
        assert_eq!(after[5 * 512..7 * 512], data[..]);
        assert_eq!(after[..5 * 512], before[..5 * 512]);
        assert_eq!(after[7 * 512..], before[7 * 512..]);
        let stats = h.stats();
        assert_eq!(
            (stats.writes, stats.bytes_written, stats.errors),
            (1, 1024, 0)
        );
    }

    #[test]
    fn multi_segment_read_and_write() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        // Write three scattered segments (512 + 1024 + 512) as sectors 10..14.
        let seg = |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| seed ^ (i as u8)).collect() };
        let (a, b, c) = (seg(512, 0x11), seg(1024, 0x22), seg(512, 0x33));
        h.fill(DATA, &a);
        h.fill(DATA2, &b);
        h.fill(DATA3, &c);
        let (len, status) = h.request(
            VIRTIO_BLK_T_OUT,
            10,
            &[r(DATA, 512), r(DATA2, 1024), r(DATA3, 512)],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let disk = h.disk();
        assert_eq!(disk[10 * 512..11 * 512], a[..]);
        assert_eq!(disk[11 * 512..13 * 512], b[..]);
        assert_eq!(disk[13 * 512..14 * 512], c[..]);

        // Read sectors 9..13 back into three other segments (1024 + 512 + 512).
        for addr in [DATA, DATA2, DATA3] {
            h.fill(addr, &[0; 1024]);
        }
        let (len, status) = h.request(
            VIRTIO_BLK_T_IN,
            9,
            &[w(DATA3, 1024), w(DATA, 512), w(DATA2, 512)],
        );
        assert_eq!((len, status), (2049, VIRTIO_BLK_S_OK as u8));
        assert_eq!(h.guest(DATA3, 1024), disk[9 * 512..11 * 512]);
        assert_eq!(h.guest(DATA, 512), disk[11 * 512..12 * 512]);
        assert_eq!(h.guest(DATA2, 512), disk[12 * 512..13 * 512]);
    }

    #[test]
    fn buffers_may_straddle_guest_memory_regions() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let start = REGION - 512; // half in each region
        let (len, status) = h.request(VIRTIO_BLK_T_IN, 20, &[w(start, 1024)]);
        assert_eq!((len, status), (1025, VIRTIO_BLK_S_OK as u8));
        assert_eq!(h.guest(start, 1024), image_bytes(20 * 512..22 * 512));

        let data: Vec<u8> = (0..1024u32).map(|i| (i % 13) as u8).collect();
        h.fill(start, &data);
        let (_, status) = h.request(VIRTIO_BLK_T_OUT, 30, &[r(start, 1024)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(h.disk()[30 * 512..32 * 512], data[..]);
    }

    #[test]
    fn large_requests_with_many_segments() {
        let mem = memory();
        let tmp = disk_image(4096); // 2 MiB
        let mut h = Harness::with(&mem, tmp, false, ALL_FEATURES_BUT_EVENT_IDX);
        // SEG_MAX segments of 4 KiB, every other page, read from sector 8.
        let segs: Vec<Buf> = (0..SEG_MAX as u64)
            .map(|i| w(0x10_0000 + i * 0x2000, 4096))
            .collect();
        let (len, status) = h.request(VIRTIO_BLK_T_IN, 8, &segs);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(len, SEG_MAX * 4096 + 1);
        for (i, seg) in segs.iter().enumerate() {
            let at = 8 * 512 + i as u64 * 4096;
            assert_eq!(
                h.guest(seg.addr, 4096),
                image_bytes(at..at + 4096),
                "segment {i}"
            );
        }
    }

    #[test]
    fn flush_succeeds_and_is_counted() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        // FLUSH ignores `sector`, even one far past the end.
        let (len, status) = h.request(VIRTIO_BLK_T_FLUSH, u64::MAX, &[]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(h.stats().flushes, 1);
        assert_eq!(h.stats().errors, 0);
    }

    #[test]
    fn writes_go_through_when_flush_is_not_negotiated() {
        let mem = memory();
        let features = ALL_FEATURES_BUT_EVENT_IDX & !feature_bit(VIRTIO_BLK_F_FLUSH);
        let mut h = Harness::with(&mem, disk_image(SECTORS), false, features);
        assert!(h.block.disk.write_through);
        h.fill(DATA, &[0x5a; 512]);
        let (_, status) = h.request(VIRTIO_BLK_T_OUT, 1, &[r(DATA, 512)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(h.disk()[512..1024], [0x5a; 512]);
        h.block.reset();
        assert!(!h.block.disk.write_through);
    }

    #[test]
    fn get_id_returns_the_padded_id() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        h.fill(DATA, &[0xee; 32]);
        let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[w(DATA, 32)]);
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
        let mut expected = b"test-disk".to_vec();
        expected.resize(ID_BYTES, 0);
        expected.extend_from_slice(&[0xee; 12]);
        assert_eq!(h.guest(DATA, 32), expected);

        // Split over two short buffers.
        h.fill(DATA, &[0xee; 8]);
        h.fill(DATA2, &[0xee; 32]);
        let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[w(DATA, 4), w(DATA2, 32)]);
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
        assert_eq!(h.guest(DATA, 8), b"test\xee\xee\xee\xee");
        assert_eq!(h.guest(DATA2, 16), b"-disk\0\0\0\0\0\0\0\0\0\0\0");

        // No buffer, or a device-readable one: IOERR.
        let (len, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        let (_, status) = h.request(VIRTIO_BLK_T_GET_ID, 0, &[r(DATA, 20)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn default_id_comes_from_inode_and_device() {
        let tmp = disk_image(1);
        let meta = tmp.as_file().metadata().unwrap();
        let block = Block::new(open(&tmp, true), true, None).unwrap();
        let expected = format!("{:x}-{:x}", meta.ino(), meta.dev());
        let len = expected.len().min(ID_BYTES);
        assert_eq!(block.id()[..len], expected.as_bytes()[..len]);
        assert!(block.id()[len..].iter().all(|&b| b == 0));
        assert_ne!(block.id(), &[0; ID_BYTES]);
    }

    #[test]
    fn id_longer_than_20_bytes_is_refused() {
        let tmp = disk_image(1);
        let ok = Block::new(open(&tmp, true), true, Some("x".repeat(20))).unwrap();
        assert_eq!(ok.id(), &[b'x'; 20]);
        let err = Block::new(open(&tmp, true), true, Some("x".repeat(21))).unwrap_err();
        assert!(matches!(err, BlockError::IdTooLong { .. }), "{err:?}");
        assert!(err.to_string().contains("21 bytes"), "{err}");
    }

    #[test]
    fn config_space_and_features() {
        // 1 MiB + 100 bytes: the partial sector is not part of the capacity.
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(0x10_0000 + 100).unwrap();
        let block = Block::new(open(&tmp, false), false, None).unwrap();
        assert_eq!(block.capacity(), 2048);
        assert_eq!(block.device_type(), 2);
        assert_eq!(block.queue_max_sizes(), &[256]);

        let read = |offset: u64, len: usize| {
            let mut data = vec![0xffu8; len];
            block.read_config(offset, &mut data);
            data
        };
        assert_eq!(read(0, 8), 2048u64.to_le_bytes());
        assert_eq!(read(0, 4), 2048u32.to_le_bytes());
        assert_eq!(read(4, 4), [0; 4]);
        assert_eq!(read(1, 1), [8]); // 2048 = 0x800
        assert_eq!(read(12, 4), 254u32.to_le_bytes(), "seg_max");
        assert_eq!(read(20, 4), 512u32.to_le_bytes(), "blk_size");
        assert_eq!(read(8, 4), [0; 4], "size_max is not offered");
        assert_eq!(read(21, 4), [2, 0, 0, 0], "partly past the end");
        assert_eq!(read(24, 8), [0; 8], "past the end");
        assert_eq!(read(u64::MAX, 4), [0; 4]);

        let features = block.avail_features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
        ] {
            assert_ne!(features & feature_bit(bit), 0, "bit {bit}");
        }
        assert_eq!(features & feature_bit(VIRTIO_BLK_F_RO), 0);
        let ro = Block::new(open(&tmp, true), true, None).unwrap();
        assert_ne!(ro.avail_features() & feature_bit(VIRTIO_BLK_F_RO), 0);
        assert!(ro.read_only());

        // Writes to the configuration space change nothing.
        let mut block = block;
        block.write_config(0, &[1, 2, 3, 4]);
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
    }

    #[test]
    fn read_only_disk_refuses_writes_and_stays_unchanged() {
        let mem = memory();
        let mut h = Harness::with(&mem, disk_image(SECTORS), true, ALL_FEATURES_BUT_EVENT_IDX);
        let before = h.disk();
        h.fill(DATA, &[0x77; 1024]);
        let (len, status) = h.request(VIRTIO_BLK_T_OUT, 2, &[r(DATA, 1024)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(h.disk(), before);
        assert_eq!(h.stats().bytes_written, 0);
        assert_eq!(h.stats().errors, 1);
        // Reads and flushes still work.
        h.assert_still_works();
        let (_, status) = h.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let before = h.disk();
        // DISCARD, WRITE_ZEROES (not offered), SCSI, and nonsense.
        for t in [11, 13, 2, 0xdead_beef] {
            let (len, status) = h.request(t, 0, &[r(DATA, 512)]);
            assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP as u8), "type {t:#x}");
        }
        assert_eq!(h.disk(), before);
        assert_eq!(h.stats().errors, 4);
        h.assert_still_works();
    }

    /// A request that must be answered IOERR with used length 1 and leave disk and data alone.
    fn assert_ioerr(h: &mut Harness, request_type: u32, sector: u64, data: &[Buf]) {
        let disk = h.disk();
        h.fill(DATA, &[0x3c; 1024]);
        let errors = h.stats().errors;
        let (len, status) = h.request(request_type, sector, data);
        assert_eq!(
            (len, status),
            (1, VIRTIO_BLK_S_IOERR as u8),
            "type {request_type} sector {sector} {data:?}"
        );
        assert_eq!(h.disk(), disk, "disk changed");
        assert_eq!(h.guest(DATA, 1024), [0x3c; 1024], "guest buffer changed");
        assert_eq!(h.stats().errors, errors + 1);
        h.assert_still_works();
    }

    #[test]
    fn bad_lengths_and_ranges_are_io_errors() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            let dir = |addr, len| {
                if t == VIRTIO_BLK_T_IN {
                    w(addr, len)
                } else {
                    r(addr, len)
                }
            };
            // Not a multiple of 512, in one or several descriptors.
            assert_ioerr(&mut h, t, 0, &[dir(DATA, 500)]);
            assert_ioerr(&mut h, t, 0, &[dir(DATA, 512), dir(DATA2, 1)]);
            // Past the end, at the end, straddling the end, overflowing.
            assert_ioerr(&mut h, t, SECTORS, &[dir(DATA, 512)]);
            assert_ioerr(&mut h, t, SECTORS - 1, &[dir(DATA, 1024)]);
            assert_ioerr(&mut h, t, u64::MAX, &[dir(DATA, 512)]);
            assert_ioerr(&mut h, t, u64::MAX / 512, &[dir(DATA, 512)]);
            assert_ioerr(&mut h, t, u64::MAX / 512 + 1, &[dir(DATA, 512)]);
            // A huge length (and a sum of lengths) beyond the disk.
            assert_ioerr(&mut h, t, 0, &[dir(DATA, 0xffff_fe00)]);
            assert_ioerr(
                &mut h,
                t,
                0,
                &[dir(DATA, 0x8000_0000), dir(DATA2, 0x7fff_fe00)],
            );
        }
        // The last sector itself is fine.
        let (_, status) = h.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[w(DATA, 512)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(h.guest(DATA, 512), h.disk()[(SECTORS as usize - 1) * 512..]);
    }

    #[test]
    fn buffers_outside_guest_memory_are_io_errors() {
        let mem = memory();
        // A sparse 8 GiB image, so huge requests pass the capacity check and reach memory.
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(8 << 30).unwrap();
        let mut h = Harness::with(&mem, tmp, false, ALL_FEATURES_BUT_EVENT_IDX);
        for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            let dir = |addr, len| {
                if t == VIRTIO_BLK_T_IN {
                    w(addr, len)
                } else {
                    r(addr, len)
                }
            };
            assert_ioerr(&mut h, t, 0, &[dir(MEM_END, 512)]);
            assert_ioerr(&mut h, t, 0, &[dir(MEM_END - 512, 1024)]);
            assert_ioerr(&mut h, t, 0, &[dir(u64::MAX - 511, 512)]);
            assert_ioerr(&mut h, t, 0, &[dir(DATA, 0xffff_fe00)]);
            // A good first segment does not get transferred when a later one is bad.
            assert_ioerr(&mut h, t, 0, &[dir(DATA, 512), dir(MEM_END + 0x1000, 512)]);
        }
        assert_eq!(h.stats().bytes_read, 512 * 10, "only the still-works reads");
        assert_eq!(h.stats().bytes_written, 0);
    }

    #[test]
    fn data_descriptors_in_the_wrong_direction_are_io_errors() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        assert_ioerr(&mut h, VIRTIO_BLK_T_IN, 0, &[r(DATA, 512)]);
        assert_ioerr(&mut h, VIRTIO_BLK_T_IN, 0, &[w(DATA2, 512), r(DATA, 512)]);
        assert_ioerr(&mut h, VIRTIO_BLK_T_OUT, 0, &[w(DATA, 512)]);
        assert_ioerr(&mut h, VIRTIO_BLK_T_OUT, 0, &[r(DATA2, 512), w(DATA, 512)]);
    }

    #[test]
    fn bad_headers_are_io_errors() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let disk = h.disk();
        h.fill(DATA, &[0x11; 512]);
        let cases: [&[Buf]; 5] = [
            // Too short.
            &[r(HDR, 8), r(DATA, 512), w(STATUS, 1)],
            &[r(HDR, 0), r(DATA, 512), w(STATUS, 1)],
            // Device-writable.
            &[w(HDR, 16), r(DATA, 512), w(STATUS, 1)],
            // Outside guest memory.
            &[r(MEM_END, 16), r(DATA, 512), w(STATUS, 1)],
            &[r(MEM_END - 8, 16), r(DATA, 512), w(STATUS, 1)],
        ];
        for bufs in cases {
            h.header(VIRTIO_BLK_T_OUT, 0);
            let len = h.submit(bufs);
            assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8), "{bufs:?}");
            assert_eq!(h.disk(), disk);
        }
        // No header at all: the chain is only a status descriptor.
        let len = h.submit(&[w(STATUS, 1)]);
        assert_eq!((len, h.status()), (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(h.stats().errors, 6);
        h.assert_still_works();
    }

    #[test]
    fn chains_without_a_usable_status_byte_come_back_with_length_zero() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let disk = h.disk();
        h.fill(DATA, &[0x22; 512]);
        h.header(VIRTIO_BLK_T_OUT, 0);
        let cases: [&[Buf]; 6] = [
            // Missing: the data is last (and is device-readable).
            &[r(HDR, 16), r(DATA, 512)],
            // Only the header.
            &[r(HDR, 16)],
            // Device-readable status.
            &[r(HDR, 16), r(DATA, 512), r(STATUS, 1)],
            // Zero-length status.
            &[r(HDR, 16), r(DATA, 512), w(STATUS, 0)],
            // Status outside guest memory.
            &[r(HDR, 16), r(DATA, 512), w(MEM_END, 1)],
            &[r(HDR, 16), r(DATA, 512), w(u64::MAX, 1)],
        ];
        for bufs in cases {
            let len = h.submit(bufs);
            assert_eq!(len, 0, "{bufs:?}");
            assert_eq!(h.status(), 0xff, "status written for {bufs:?}");
        }
        // None of these writes was carried out: with no way to report, nothing is done.
        assert_eq!(h.disk(), disk);
        assert_eq!(h.stats().writes, 0);
        assert_eq!(h.stats().errors, 6);
        h.assert_still_works();
    }

    #[test]
    fn descriptor_loops_and_bad_links_come_back_with_length_zero() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        h.header(VIRTIO_BLK_T_IN, 0);
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        // 100 -> 101 -> 102 -> 101 ...
        h.q.store(100, HDR, 16, next, 101);
        h.q.store(101, DATA, 512, next | write, 102);
        h.q.store(102, STATUS, 1, next | write, 101);
        // 110 -> 110 ...
        h.q.store(110, HDR, 16, next, 110);
        // 120 -> 999 (out of the table).
        h.q.store(120, HDR, 16, next, 999);
        for head in [100, 110, 120] {
            h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            h.q.publish(head);
            h.block.process_queue(0);
            assert_eq!(h.q.take_used(), [(u32::from(head), 0)]);
            assert_eq!(h.status(), 0xff);
        }
        // A head index past the queue cannot even be returned; it is skipped.
        h.q.publish(QUEUE_SIZE + 5);
        h.block.process_queue(0);
        assert_eq!(h.q.take_used(), []);
        assert_eq!(h.stats().errors, 4);
        assert_eq!(h.stats().requests, 4);
        h.assert_still_works();
    }

    #[test]
    fn indirect_descriptor_tables() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        h.header(VIRTIO_BLK_T_IN, 12);
        h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = h.q.add_indirect_chain(
            INDIRECT,
            &[r(HDR, 16), w(DATA, 512), w(DATA2, 1024), w(STATUS, 1)],
        );
        h.block.process_queue(0);
        assert_eq!(h.q.take_used(), [(u32::from(head), 1537)]);
        assert_eq!(h.status(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(h.guest(DATA, 512), image_bytes(12 * 512..13 * 512));
        assert_eq!(h.guest(DATA2, 1024), image_bytes(13 * 512..15 * 512));

        // A table whose length is not a whole number of descriptors is a broken chain.
        let head = h.q.write_chain(&[r(INDIRECT, 16 * 4 - 1)]);
        h.q.store(head, INDIRECT, 16 * 4 - 1, VRING_DESC_F_INDIRECT as u16, 0);
        h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        h.q.publish(head);
        h.block.process_queue(0);
        assert_eq!(h.q.take_used(), [(u32::from(head), 0)]);
        assert_eq!(h.status(), 0xff);
        h.assert_still_works();
    }

    #[test]
    fn bogus_available_index_does_not_hang_the_device() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let good = h.q.avail_idx();
        h.q.set_avail_idx(good.wrapping_add(QUEUE_SIZE + 10));
        assert!(!h.block.process_queue(0));
        assert_eq!(h.q.take_used(), []);
        h.q.set_avail_idx(good);
        h.assert_still_works();
    }

    #[test]
    fn one_notification_per_batch() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        h.header(VIRTIO_BLK_T_IN, 0);
        for (i, addr) in [DATA, DATA2, DATA3].into_iter().enumerate() {
            h.q.add_chain(&[r(HDR, 16), w(addr, 512), w(STATUS + i as u64, 1)]);
        }
        assert!(h.block.process_queue(0));
        let used = h.q.take_used();
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            [513, 513, 513]
        );
        assert_eq!(h.irq.used(), 1);
        assert_eq!(h.stats().notifications, 1);
        assert_eq!(h.q.used_flags(), 0, "notifications are enabled again");

        // Nothing new: no notification.
        assert!(!h.block.process_queue(0));
        assert_eq!(h.irq.used(), 1);
        // Another queue index: nothing.
        h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
        assert!(!h.block.process_queue(1));
        assert_eq!(h.q.take_used(), []);
        assert!(h.block.process_queue(0));
        assert_eq!(h.q.take_used().len(), 1);
    }

    #[test]
    fn event_idx_suppresses_notifications_until_used_event() {
        let mem = memory();
        let mut h = Harness::with(&mem, disk_image(SECTORS), false, u64::MAX);
        h.header(VIRTIO_BLK_T_IN, 0);
        // The driver wants an interrupt only once the used index passes 2.
        h.q.set_used_event(2);
        for _ in 0..2 {
            h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
            assert!(!h.block.process_queue(0), "used_event not reached");
        }
        assert_eq!(h.irq.used(), 0);
        assert_eq!(h.q.take_used().len(), 2);
        // The device asks to be notified at the next available index.
        assert_eq!(h.q.avail_event(), 2);
        h.q.add_chain(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
        assert!(h.block.process_queue(0), "used index went from 2 to 3");
        assert_eq!(h.irq.used(), 1);
        assert_eq!(h.q.avail_event(), 3);
    }

    #[test]
    fn activate_checks_queues_and_reset_deactivates() {
        let mem = memory();
        let q = GuestQueue::new(&mem, GuestAddress(0), QUEUE_SIZE);
        let tmp = disk_image(SECTORS);
        let mut block = Block::new(open(&tmp, false), false, None).unwrap();
        let irq: Arc<CountingInterrupt> = Arc::default();

        let err = block
            .activate(mem.clone(), vec![], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 1,
                actual: 0
            }
        ));
        let err = block
            .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 1,
                actual: 2
            }
        ));
        let mut not_ready = q.queue();
        not_ready.set_ready(false);
        let err = block
            .activate(mem.clone(), vec![not_ready], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueNotReady { index: 0 }));
        assert!(!block.is_activated());
        assert!(!block.process_queue(0));

        block
            .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
            .unwrap();
        assert!(block.is_activated());
        let err = block
            .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
            .unwrap_err();
        assert!(matches!(err, ActivateError::AlreadyActive));

        block.reset();
        assert!(!block.is_activated());
        assert!(!block.process_queue(0));
        block
            .activate(mem.clone(), vec![q.queue()], 0, irq)
            .unwrap();
        assert!(block.is_activated());
    }

    #[test]
    fn empty_data_requests_succeed_without_io() {
        let mem = memory();
        let mut h = Harness::new(&mem);
        let (len, status) = h.request(VIRTIO_BLK_T_IN, 3, &[]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let (len, status) = h.request(VIRTIO_BLK_T_OUT, SECTORS, &[]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(h.stats().bytes_read + h.stats().bytes_written, 0);
    }

    #[test]
    fn transfer_all_resumes_after_short_transfers() {
        // Many small buffers: more than IOV_MAX of them, so several calls are needed.
        let tmp = disk_image(8);
        let file = open(&tmp, false);
        let mut bufs = vec![[0u8; 3]; IOV_MAX + 300];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the iovecs point into `bufs`, which outlives the call.
        unsafe { transfer_all(&file, &mut iovs, 5, false) }.unwrap();
        let flat: Vec<u8> = bufs.iter().flatten().copied().collect();
        assert_eq!(flat, image_bytes(5..5 + flat.len() as u64));

        // Reading past the end of the file is an error, not a hang.
        let mut big = vec![0u8; 8 * 512];
        let mut iov = [libc::iovec {
            iov_base: big.as_mut_ptr().cast(),
            iov_len: big.len(),
        }];
        // SAFETY: the iovec points into `big`, which outlives the call.
        let err = unsafe { transfer_all(&file, &mut iov, 512, false) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
