//! Placing a file in guest memory apart from copying it there.
//!
//! Parsing a kernel or an initrd, and checking where it goes, reads a few headers; copying it
//! is most of the work of loading (12 MB for a Linux `vmlinux`, every destination page faulted
//! in and zeroed by the host first). [`Placement`] is the copy, planned but not done: the
//! loader fills one in, and the VMM does the copy when and on whichever threads it likes,
//! meanwhile creating the VM. [`CopyQueue`] shares the copies of several files among threads
//! in [`CHUNK`]-sized pieces.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile,
    VolatileMemoryError, VolatileSlice,
};

use crate::memory::HOST_ALIGN;
use crate::GuestMemoryMmap;

/// The piece of a copy that one thread takes at a time: pieces end at multiples of it in guest
/// memory, which are huge-page boundaries on the host ([`HOST_ALIGN`]), so no two threads fault
/// in the same huge page.
pub const CHUNK: u64 = HOST_ALIGN as u64;

/// Bytes of a file that belong at an address of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub offset: u64,
    /// Guest-physical destination.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

/// Where a file's bytes go in guest memory, not copied yet: [`Placement::copy`] copies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    extents: Vec<Extent>,
}

impl Placement {
    /// The placement of `len` bytes from offset 0 of a file at `addr`.
    pub(crate) fn whole(addr: GuestAddress, len: u64) -> Self {
        Self {
            extents: vec![Extent {
                offset: 0,
                addr,
                len,
            }],
        }
    }

    /// The extents, in the order the loader placed them.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Bytes to copy.
    pub fn len(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies every extent from `file` on this thread.
    pub fn copy(&self, mem: &GuestMemoryMmap, file: &File) -> io::Result<()> {
        self.extents
            .iter()
            .try_for_each(|extent| copy_extent(mem, file, extent))
    }
}

/// Reads `extent` of `file` into guest memory with positioned reads (any thread, any order).
fn copy_extent(mem: &GuestMemoryMmap, file: &File, extent: &Extent) -> io::Result<()> {
    let len = usize::try_from(extent.len).map_err(io::Error::other)?;
    let slice = mem.get_slice(extent.addr, len).map_err(io::Error::other)?;
    let mut done = 0usize;
    while done < len {
        let guard = slice.ptr_guard_mut();
        let offset = extent.offset + done as u64;
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: `slice` is `len` bytes of guest memory (get_slice checked that they lie in
        // one region), so [ptr + done, ptr + len) is valid for writes; pread writes at most
        // `len - done` bytes there and nothing else. The file descriptor is valid for the call.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                guard.as_ptr().add(done).cast(),
                len - done,
                offset,
            )
        };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was being loaded",
                ))
            }
            n if n > 0 => done += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// A file as `linux-loader` reads it, except that what it would read into guest memory is
/// noted as a [`Placement`] and skipped: the loader parses and checks the image as usual,
/// and the bulk copy is left for later. Reads into anything else (headers, notes) and seeks go
/// to the file. A read past the end of the file comes short, as from the file itself.
pub(crate) struct PlacingReader<'a> {
    file: &'a mut File,
    mem: &'a GuestMemoryMmap,
    size: u64,
    placement: Placement,
}

impl<'a> PlacingReader<'a> {
    pub(crate) fn new(file: &'a mut File, mem: &'a GuestMemoryMmap) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            mem,
            size,
            placement: Placement::default(),
        })
    }

    pub(crate) fn into_placement(self) -> Placement {
        self.placement
    }

    /// The guest-physical address of a host pointer into guest memory.
    fn guest_addr(&self, host: *const u8) -> Option<GuestAddress> {
        let host = host as usize;
        self.mem.iter().find_map(|region| {
            let start = region.as_ptr() as usize;
            let offset = host.checked_sub(start)?;
            (offset < region.len() as usize)
                .then(|| region.start_addr().unchecked_add(offset as u64))
        })
    }
}

impl Read for PlacingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for PlacingReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for PlacingReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        // A read into the loader's own buffer (bzImage's setup header) is done.
        let Some(addr) = self.guest_addr(buf.ptr_guard().as_ptr()) else {
            return self.file.read_volatile(buf);
        };
        let pos = self
            .file
            .stream_position()
            .map_err(VolatileMemoryError::IOError)?;
        let len = (buf.len() as u64).min(self.size.saturating_sub(pos));
        if len == 0 {
            return Ok(0);
        }
        self.placement.extents.push(Extent {
            offset: pos,
            addr,
            len,
        });
        self.file
            .seek(SeekFrom::Current(len as i64))
            .map_err(VolatileMemoryError::IOError)?;
        Ok(len as usize)
    }
}

/// A copy of one file's [`CHUNK`] that failed: which file (its index in
/// [`CopyQueue::new`]'s list) and why.
#[derive(Debug)]
pub struct CopyFailed {
    /// Index of the file in the list given to [`CopyQueue::new`].
    pub file: usize,
    /// What the read said.
    pub source: io::Error,
}

/// The copies of several placed files, cut into [`CHUNK`]s that threads take in turn: each
/// thread that calls [`CopyQueue::work`] copies chunks until none is left.
pub struct CopyQueue<'a> {
    files: Vec<&'a File>,
    /// (index into `files`, extent), in the order the placements list them.
    chunks: Vec<(usize, Extent)>,
    next: AtomicUsize,
}

impl<'a> CopyQueue<'a> {
    /// The queue for `jobs`: each file with its placement.
    pub fn new(jobs: &[(&'a File, &Placement)]) -> Self {
        let mut chunks = Vec::new();
        for (index, (_, placement)) in jobs.iter().enumerate() {
            for extent in placement.extents() {
                let mut rest = *extent;
                while rest.len > 0 {
                    let to_boundary = CHUNK - rest.addr.0 % CHUNK;
                    let len = rest.len.min(to_boundary);
                    chunks.push((index, Extent { len, ..rest }));
                    rest = Extent {
                        offset: rest.offset + len,
                        addr: rest.addr.unchecked_add(len),
                        len: rest.len - len,
                    };
                }
            }
        }
        Self {
            files: jobs.iter().map(|(file, _)| *file).collect(),
            chunks,
            next: AtomicUsize::new(0),
        }
    }

    /// Bytes to copy in all.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|(_, e)| e.len).sum()
    }

    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Copies chunks until none is left (or one fails: then the others are left too). Chunks
    /// are copied in no set order: extents must not overlap (the loader refuses ELF segments
    /// that do).
    pub fn work(&self, mem: &GuestMemoryMmap) -> Result<(), CopyFailed> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(file, extent)) = self.chunks.get(i) else {
                return Ok(());
            };
            if let Err(source) = copy_extent(mem, self.files[file], &extent) {
                self.cancel();
                return Err(CopyFailed { file, source });
            }
        }
    }

    /// Leaves the chunks nobody has taken yet: [`CopyQueue::work`] returns once its current
    /// chunk is copied.
    pub fn cancel(&self) {
        self.next.store(self.chunks.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
