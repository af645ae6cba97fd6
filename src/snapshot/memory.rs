//! The memory file: guest RAM, region after region from offset 0 (the layout of
//! [`boot::memory::ram_regions`]), as a sparse file. Pages the guest has never written read as
//! zeros and are left as holes, so the file takes the disk space of what the guest has, and a
//! restore maps it `MAP_PRIVATE` ([`boot::memory::map_guest_memory_file`]): nothing is copied,
//! each page is read from the page cache on first touch.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The unit of hole detection: the guest's page size.
const PAGE: usize = boot::memory::PAGE_SIZE as usize;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;

/// What [`save`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The file's length: all of guest RAM.
    pub len: u64,
    /// Bytes of data written (the rest are holes).
    pub data: u64,
}

/// Writes all of `mem` to `file` (new and empty), skipping pages of zeros.
pub fn save(mem: &GuestMemoryMmap, file: &File) -> io::Result<Written> {
    let len: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(len)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut data = 0u64;
    for region in mem.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let n = (region.len() - done).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, region.start_addr().unchecked_add(done))
                .map_err(io::Error::other)?;
            // Runs of non-zero pages, each written with one call.
            let mut page = 0;
            while page < n {
                if is_zero(&chunk[page..(page + PAGE).min(n)]) {
                    page += PAGE;
                    continue;
                }
                let start = page;
                while page < n && !is_zero(&chunk[page..(page + PAGE).min(n)]) {
                    page += PAGE;
                }
                let end = page.min(n);
                file.write_all_at(&chunk[start..end], offset + done + start as u64)?;
                data += (end - start) as u64;
            }
            done += n as u64;
        }
        offset += region.len();
    }
    file.sync_data()?;
    Ok(Written { len, data })
}

fn is_zero(bytes: &[u8]) -> bool {
    // Compared as u64 words: the chunk is page-aligned in length, the tail byte-wise.
    let (words, tail) = bytes.split_at(bytes.len() & !7);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::GuestAddress;

    #[test]
    fn pages_of_zeros_stay_holes_and_the_rest_reads_back() {
        let size = 64u64 << 20;
        let mem = boot::memory::create_guest_memory(size, false).unwrap();
        let marks = [0x1000u64, 0x1_0000, 7 << 20, size - 8];
        for (i, &addr) in marks.iter().enumerate() {
            mem.write_obj(0xa5a5_0000_u64 + i as u64, GuestAddress(addr))
                .unwrap();
        }
        let path = std::env::temp_dir().join(format!("vmm-memfile-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let written = save(&mem, &file).unwrap();
        assert_eq!(written.len, size);
        assert_eq!(written.data, marks.len() as u64 * PAGE as u64);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        // st_blocks counts 512-byte blocks actually allocated: a few pages, not 64 MiB.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

        let file = File::open(&path).unwrap();
        let back = boot::memory::map_guest_memory_file(size, &file).unwrap();
        for (i, &addr) in marks.iter().enumerate() {
            assert_eq!(
                back.read_obj::<u64>(GuestAddress(addr)).unwrap(),
                0xa5a5_0000_u64 + i as u64
            );
        }
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[0; 13]));
        let mut page = [0u8; 4096];
        page[4095] = 1;
        assert!(!is_zero(&page));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
