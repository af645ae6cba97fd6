//! Guest RAM: where it lies, how it is allocated, and the e820 map the guest is told about.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::layout::{EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, MMIO_GAP_START};
use crate::GuestMemoryMmap;

/// Smallest guest memory accepted, 8 MiB: the first MiB holds the boot structures and the legacy
/// BIOS/VGA hole, the kernel is loaded at 1 MiB ([`HIMEM_START`]) and needs room to decompress
/// and run. A real Linux kernel needs more than this; the loader reports that case with the
/// kernel's own size.
pub const MIN_MEM_SIZE: u64 = 8 << 20;

/// Guest memory sizes must be a whole number of 4 KiB pages.
pub const PAGE_SIZE: u64 = 0x1000;

/// Errors from laying out or allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size is below [`MIN_MEM_SIZE`].
    #[error(
        "guest memory of {} KiB is too small: at least {} MiB is needed (the kernel is loaded at 1 MiB)",
        .size >> 10,
        MIN_MEM_SIZE >> 20
    )]
    TooSmall {
        /// Requested size in bytes.
        size: u64,
    },
    /// The requested size is not a multiple of the page size.
    #[error("guest memory size {size:#x} is not a multiple of the 4 KiB page size")]
    NotPageAligned {
        /// Requested size in bytes.
        size: u64,
    },
    /// The requested size does not fit the guest physical address space.
    #[error("guest memory size {size:#x} does not fit in the 64-bit guest physical address space")]
    TooLarge {
        /// Requested size in bytes.
        size: u64,
    },
    /// A memory file is shorter than the guest memory it is to back.
    #[error("the memory file holds {len} bytes, but the guest has {size} bytes of memory")]
    ShortFile {
        /// The file's length.
        len: u64,
        /// The guest memory size.
        size: u64,
    },
    /// The host could not map the memory.
    #[error("cannot allocate {} MiB of guest memory: {source}", .size >> 20)]
    Allocate {
        /// Requested size in bytes.
        size: u64,
        /// What `mmap` or `vm-memory` reported.
        #[source]
        source: io::Error,
    },
}

/// The host-virtual alignment of every guest RAM region: 2 MiB, the x86-64 huge page. Guest
/// RAM starts at guest-physical 0 and 4 GiB, so with its host addresses aligned too, each
/// 2 MiB of the guest is one 2 MiB of the host: the host kernel can back it with a
/// transparent huge page (where its THP policy says so: `always`, or `madvise` with
/// `madvise(MADV_HUGEPAGE)`) and KVM can then map it with one 2 MiB entry of its nested page
/// tables instead of 512 4 KiB ones (KVM uses large pages only where guest-physical and host
/// addresses agree modulo 2 MiB). A plain `mmap` is only 4 KiB aligned. QEMU aligns its RAM
/// the same way.
pub const HOST_ALIGN: usize = 2 << 20;

/// The guest RAM regions for `mem_size` bytes: from 0 up to the 32-bit MMIO gap
/// ([`MMIO_GAP_START`]), and whatever does not fit below the gap from 4 GiB up.
///
/// A size of 0 gives no regions; [`create_guest_memory`] checks sizes.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let below_gap = mem_size.min(MMIO_GAP_START.0);
    let above_gap = mem_size - below_gap;
    let mut regions = Vec::with_capacity(2);
    if below_gap > 0 {
        regions.push((GuestAddress(0), below_gap as usize));
    }
    if above_gap > 0 {
        regions.push((FIRST_ADDR_PAST_32BITS, above_gap as usize));
    }
    regions
}

/// Checks `mem_size` against the limits in this module.
pub fn check_mem_size(mem_size: u64) -> Result<(), Error> {
    if mem_size < MIN_MEM_SIZE {
        return Err(Error::TooSmall { size: mem_size });
    }
    if !mem_size.is_multiple_of(PAGE_SIZE) {
        return Err(Error::NotPageAligned { size: mem_size });
    }
    let above_gap = mem_size.saturating_sub(MMIO_GAP_START.0);
    if FIRST_ADDR_PAST_32BITS.0.checked_add(above_gap).is_none()
        || usize::try_from(mem_size).is_err()
    {
        return Err(Error::TooLarge { size: mem_size });
    }
    Ok(())
}

/// Allocates `mem_size` bytes of anonymous guest memory laid out by [`ram_regions`], each
/// region at a [`HOST_ALIGN`]-aligned host address. The mappings stay for the life of the
/// process (vm-memory does not unmap memory it did not map itself; vmm runs one VM per
/// process).
///
/// With `thp`, guest RAM from 2 MiB up is marked `madvise(MADV_HUGEPAGE)`: where the host's
/// THP policy is `madvise` (Debian's default) the first touch of each 2 MiB then brings a huge
/// page, as with `always`. QEMU and Cloud Hypervisor mark all of guest RAM by default: far
/// fewer page faults and nested-page-table entries for a guest that touches much of its memory
/// (Linux), at the price of host memory in 2 MiB steps. The first 2 MiB are left out: a guest
/// touches only scattered pages there (the boot structures, the start of the kernel), and a
/// guest that touches nothing else keeps its small RSS. A kernel without THP refuses the
/// advice; it is then ignored.
pub fn create_guest_memory(mem_size: u64, thp: bool) -> Result<GuestMemoryMmap, Error> {
    let mem = map_guest_memory(mem_size, Backing::Anonymous)?;
    advise_huge_pages(&mem, thp);
    Ok(mem)
}

/// Creates guest memory as [`create_guest_memory`] does, but backed by a memfd and mapped
/// shared, so that another process given the file (a vhost-user back end such as virtiofsd)
/// sees and writes the same pages. Each region's [`vm_memory::FileOffset`] names the memfd and
/// where the region starts in it.
pub fn create_shared_guest_memory(mem_size: u64, thp: bool) -> Result<GuestMemoryMmap, Error> {
    check_mem_size(mem_size)?;
    let allocate = |source| Error::Allocate {
        size: mem_size,
        source,
    };
    // SAFETY: a NUL-terminated name and valid flags; the result is checked and the new
    // descriptor owned below.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(allocate(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(mem_size).map_err(allocate)?;
    let mem = map_guest_memory(mem_size, Backing::Shared(&file))?;
    advise_huge_pages(&mem, thp);
    Ok(mem)
}

/// With `thp`, marks guest RAM from 2 MiB up `MADV_HUGEPAGE` (see [`create_guest_memory`]).
fn advise_huge_pages(mem: &GuestMemoryMmap, thp: bool) {
    if thp {
        for region in mem.iter() {
            let skip = if region.start_addr().0 == 0 {
                HOST_ALIGN
            } else {
                0
            };
            let len = (region.len() as usize).saturating_sub(skip);
            if len == 0 {
                continue;
            }
            // SAFETY: `skip` is below the region's length, so [addr, addr + len) is inside
            // the region's window of a mapping of this process made above; the advice changes
            // how the kernel backs it, not what it holds.
            let rc = unsafe {
                let addr = region.as_ptr().add(skip);
                libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE)
            };
            if rc != 0 {
                log::debug!(
                    "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Maps `mem_size` bytes of guest memory, laid out by [`ram_regions`], from `file`: the
/// regions one after the other in the file, from offset 0 (a snapshot's memory file). The
/// mapping is private (`MAP_PRIVATE`): pages are read from the file on first touch, guests
/// mapping the same file share its page cache until they write, and what the guest writes
/// never reaches the file. The file must hold at least `mem_size` bytes.
///
/// The file must not shrink while the guest runs: a page past its end would fault the VMM.
pub fn map_guest_memory_file(mem_size: u64, file: &File) -> Result<GuestMemoryMmap, Error> {
    let len = file
        .metadata()
        .map(|m| m.len())
        .map_err(|source| Error::Allocate {
            size: mem_size,
            source,
        })?;
    if len < mem_size {
        return Err(Error::ShortFile {
            len,
            size: mem_size,
        });
    }
    map_guest_memory(mem_size, Backing::Private(file))
}

/// What guest RAM is mapped from.
#[derive(Clone, Copy)]
enum Backing<'a> {
    /// Anonymous memory, private to the VMM.
    Anonymous,
    /// A file mapped `MAP_PRIVATE` (a snapshot's memory file): read from it, never written.
    Private(&'a File),
    /// A file mapped `MAP_SHARED` (a memfd that another process may map too).
    Shared(&'a File),
}

fn map_guest_memory(mem_size: u64, backing: Backing) -> Result<GuestMemoryMmap, Error> {
    check_mem_size(mem_size)?;
    let allocate = |source| Error::Allocate {
        size: mem_size,
        source,
    };
    let mut offset = 0u64;
    let regions = ram_regions(mem_size)
        .into_iter()
        .map(|(base, size)| {
            let mapping = map_aligned(size, backing, offset)?;
            offset += size as u64;
            GuestRegionMmap::new(mapping, base)
                .ok_or_else(|| io::Error::other("the region overflows the address space"))
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(allocate)?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| allocate(io::Error::other(e)))
}

/// A lazily backed mapping of `size` bytes (a multiple of the page size) at a
/// [`HOST_ALIGN`]-aligned address: an anonymous mapping `HOST_ALIGN` larger, trimmed at both
/// ends, and with a file `backing`, the file's bytes from `offset` mapped over the window kept.
fn map_aligned<B: NewBitmap>(
    size: usize,
    backing: Backing,
    offset: u64,
) -> io::Result<vm_memory::MmapRegion<B>> {
    let (file, shared) = match backing {
        Backing::Anonymous => (None, false),
        Backing::Private(file) => (Some(file), false),
        Backing::Shared(file) => (Some(file), true),
    };
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let len = size
        .checked_add(HOST_ALIGN)
        .ok_or_else(|| io::Error::other("the region is too large"))?;
    // SAFETY: a new anonymous mapping at an address the kernel chooses; it touches no
    // existing memory. The result is checked.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HOST_ALIGN);
    let (head, tail) = (aligned - start, start + len - (aligned + size));
    for (addr, n) in [(start, head), (aligned + size, tail)] {
        // SAFETY: [addr, addr + n) lies inside the mapping made above and outside the
        // window kept; nothing refers to it.
        if n > 0 && unsafe { libc::munmap(addr as *mut libc::c_void, n) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut file_offset = None;
    if let Some(file) = file {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::other("the file offset is too large"))?;
        let sharing = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let file_flags = sharing | libc::MAP_NORESERVE | libc::MAP_FIXED;
        // SAFETY: MAP_FIXED replaces exactly [aligned, aligned + size), the anonymous window
        // made above that nothing refers to yet, with a mapping of the file; the
        // file descriptor is valid for the call (the mapping keeps its own reference).
        let mapped = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                size,
                prot,
                file_flags,
                file.as_raw_fd(),
                off,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if shared {
            file_offset = Some(vm_memory::FileOffset::new(file.try_clone()?, offset));
        }
    }
    let mut builder = MmapRegionBuilder::new_with_bitmap(size, B::with_len(size))
        .with_mmap_prot(prot)
        .with_mmap_flags(if shared {
            libc::MAP_SHARED | libc::MAP_NORESERVE
        } else {
            flags
        });
    if let Some(file_offset) = file_offset {
        builder = builder.with_file_offset(file_offset);
    }
    // SAFETY: [aligned, aligned + size) is a mapping of this process, made above, that is
    // never unmapped (the region does not own it), so it stays valid as long as the region.
    unsafe { builder.with_raw_mmap_pointer(aligned as *mut u8) }
        .build()
        .map_err(io::Error::other)
}

/// Kind of an e820 range (ACPI 6.5 §15.3 "Address Range Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// `AddressRangeMemory` (1): usable RAM.
    Ram,
    /// `AddressRangeReserved` (2): not for the OS to use.
    Reserved,
}

impl E820Kind {
    /// The e820 type number, also used by the PVH memory map (`XEN_HVM_MEMMAP_TYPE_*`).
    pub const fn as_u32(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One e820 memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The memory map the guest is given (zero page e820 table or PVH memmap), as Firecracker and
/// Cloud Hypervisor lay it out:
///
/// - RAM `[0, EBDA_START)`: conventional memory below the EBDA;
/// - reserved `[EBDA_START, HIMEM_START)`: the EBDA, which holds the MP table, and the legacy
///   VGA/BIOS hole;
/// - RAM `[HIMEM_START, min(mem_size, MMIO_GAP_START))`;
/// - RAM `[4 GiB, 4 GiB + rest)` when `mem_size` reaches past the MMIO gap.
///
/// The MMIO gap itself is left out (a hole, not RAM). Sizes too small to reach 1 MiB give only
/// the low entries; [`create_guest_memory`] rejects them anyway.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(4);
    let mut push = |addr: u64, end: u64, kind: E820Kind| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    push(0, mem_size.min(EBDA_START.0), E820Kind::Ram);
    push(EBDA_START.0, HIMEM_START.0, E820Kind::Reserved);
    push(HIMEM_START.0, mem_size.min(MMIO_GAP_START.0), E820Kind::Ram);
    let above_gap = mem_size.saturating_sub(MMIO_GAP_START.0);
    push(
        FIRST_ADDR_PAST_32BITS.0,
        FIRST_ADDR_PAST_32BITS.0.saturating_add(above_gap),
        E820Kind::Ram,
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn ram_regions_small() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn ram_regions_exactly_gap() {
        assert_eq!(
            ram_regions(3 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize)]
        );
    }

    #[test]
    fn ram_regions_straddling_gap() {
        assert_eq!(
            ram_regions(5 * GIB),
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (2 * GIB) as usize)
            ]
        );
    }

    #[test]
    fn e820_small() {
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: 0x100000,
                    size: 128 * MIB - 0x100000,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn e820_straddling_gap() {
        let map = e820_map(4 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            E820Entry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820Kind::Ram
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM except the EBDA and the legacy hole below 1 MiB.
        assert_eq!(ram, 4 * GIB - (MIB - 0x9fc00));
        assert_eq!(E820Kind::Ram.as_u32(), 1);
        assert_eq!(E820Kind::Reserved.as_u32(), 2);
    }

    #[test]
    fn size_checks() {
        assert!(matches!(
            create_guest_memory(0, false),
            Err(Error::TooSmall { size: 0 })
        ));
        assert!(matches!(
            create_guest_memory(2 * MIB, false),
            Err(Error::TooSmall { .. })
        ));
        assert!(matches!(
            create_guest_memory(MIN_MEM_SIZE + 1, false),
            Err(Error::NotPageAligned { .. })
        ));
        assert!(matches!(
            create_guest_memory(!(PAGE_SIZE - 1), false),
            Err(Error::TooLarge { .. })
        ));
        let msg = Error::TooSmall { size: 2 * MIB }.to_string();
        assert!(msg.contains("2048 KiB") && msg.contains("8 MiB"), "{msg}");
    }

    #[test]
    fn create_small_memory() {
        let mem = create_guest_memory(MIN_MEM_SIZE, false).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(MIN_MEM_SIZE - 1));
    }

    #[test]
    fn memory_mapped_from_a_file_reads_it_and_never_writes_it() {
        use std::io::Write;
        let size = 16 * MIB;
        let path = std::env::temp_dir().join(format!("boot-memfile-{}", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.set_len(size).unwrap();
        let page = [0x5au8; 4096];
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(3 * MIB)).unwrap();
        file.write_all(&page).unwrap();
        let file = File::open(&path).unwrap();
        let mem = map_guest_memory_file(size, &file).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * MIB)).unwrap(), 0x5a);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(3 * MIB + 4095)).unwrap(),
            0x5a
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(5 * MIB)).unwrap(), 0);
        mem.write_obj(0x77u8, GuestAddress(3 * MIB)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * MIB)).unwrap(), 0x77);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(
            on_disk[(3 * MIB) as usize],
            0x5a,
            "the guest's write reached the file"
        );
        // A file shorter than the memory is refused (touching past its end would fault).
        let short = File::create(&path).unwrap();
        short.set_len(size - 4096).unwrap();
        let err = map_guest_memory_file(size, &short).unwrap_err();
        assert!(matches!(err, Error::ShortFile { .. }), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    /// The `VmFlags` of the mapping of this process that holds `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let holds = |line: &str| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            let parse = |h: &str| usize::from_str_radix(h, 16).ok();
            matches!((parse(start), parse(end)), (Some(s), Some(e)) if s <= addr && addr < e)
        };
        let mut lines = smaps.lines().skip_while(|l| !holds(l));
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_else(|| panic!("no mapping at {addr:#x}"))
            .to_string()
    }

    #[test]
    fn with_thp_guest_ram_above_2_mib_is_marked_for_huge_pages() {
        // `hg`: MADV_HUGEPAGE (Documentation/filesystems/proc.rst).
        let marked = |addr: usize| vm_flags(addr).split_whitespace().any(|f| f == "hg");
        for thp in [true, false] {
            let mem = create_guest_memory(64 * MIB, thp).unwrap();
            let host = mem.iter().next().unwrap().as_ptr() as usize;
            assert!(!marked(host), "the first 2 MiB are never marked");
            assert_eq!(marked(host + HOST_ALIGN), thp, "thp {thp}");
        }
    }

    #[test]
    fn every_region_is_mapped_at_a_huge_page_aligned_host_address() {
        let mem = create_guest_memory(3 * GIB + 16 * MIB, false).unwrap();
        for region in mem.iter() {
            let host = region.as_ptr() as usize;
            assert_eq!(
                host % HOST_ALIGN,
                0,
                "{:#x} at {host:#x}",
                region.start_addr().0
            );
        }
        // The memory is usable from end to end.
        let last = mem.last_addr();
        mem.write_obj(0xa5u8, last).unwrap();
        assert_eq!(mem.read_obj::<u8>(last).unwrap(), 0xa5);
        mem.write_obj(0x5au8, GuestAddress(0)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0)).unwrap(), 0x5a);
    }

    #[test]
    fn shared_memory_is_one_memfd_that_another_mapping_sees() {
        use std::os::unix::fs::FileExt;
        let mem = create_shared_guest_memory(3 * GIB + 16 * MIB, false).unwrap();
        let mut expected_offset = 0;
        for region in mem.iter() {
            let file_offset = region
                .file_offset()
                .expect("a shared region names its file");
            assert_eq!(file_offset.start(), expected_offset);
            expected_offset += region.len();
        }
        // A write through guest memory is in the file (what a vhost-user back end maps), and
        // the other way round, in the region above 4 GiB too.
        let high = GuestAddress(4 * GIB + 4096);
        mem.write_obj(0xfeed_f00d_u32, high).unwrap();
        let region = mem.find_region(high).unwrap();
        let file_offset = region.file_offset().unwrap();
        let at = file_offset.start() + (high.0 - region.start_addr().0);
        let mut bytes = [0u8; 4];
        file_offset.file().read_exact_at(&mut bytes, at).unwrap();
        assert_eq!(u32::from_le_bytes(bytes), 0xfeed_f00d);
        file_offset.file().write_all_at(&[0xab; 4], at).unwrap();
        assert_eq!(mem.read_obj::<u32>(high).unwrap(), 0xabab_abab);
    }

    #[test]
    fn create_memory_straddling_gap() {
        // Anonymous mappings are lazily backed, so this costs no real memory.
        let mem = create_guest_memory(3 * GIB + 16 * MIB, false).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr(), r.len())).collect();
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), 3 * GIB),
                (GuestAddress(4 * GIB), 16 * MIB)
            ]
        );
    }
}
