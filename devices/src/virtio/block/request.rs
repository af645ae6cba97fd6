//! Running one virtio-blk request (virtio 1.2 §5.2.6): the header, the data moved between
//! guest memory and the disk image with `preadv`/`pwritev`, and the status byte.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, VolatileSlice};

use super::{BlockCounters, Disk, REQUEST_HEADER_LEN, SECTOR_SIZE};
use crate::virtio::IOV_MAX;

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
    #[error("an earlier fdatasync of the disk image failed")]
    SyncFailedBefore,
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
pub(super) unsafe fn transfer_all(
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
    pub(super) fn execute_chain(
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

    /// `fdatasync`, failing for good once it failed (see `Disk::sync_failed`).
    fn sync(&self) -> Result<(), RequestError> {
        if self.sync_failed.load(Ordering::Relaxed) {
            return Err(RequestError::SyncFailedBefore);
        }
        #[cfg(test)]
        let injected = self
            .fail_next_sync
            .lock()
            .unwrap()
            .take()
            .map(io::Error::from);
        #[cfg(not(test))]
        let injected: Option<io::Error> = None;
        let result = match injected {
            Some(e) => Err(e),
            None => self.file.sync_data(),
        };
        result.map_err(|e| {
            // Logged with the request's failure; the later ones at debug level.
            self.sync_failed.store(true, Ordering::Relaxed);
            RequestError::Io(e)
        })
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
                self.sync()?;
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
        if !len.is_multiple_of(SECTOR_SIZE) {
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
            self.sync()?;
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
