//! Guest RAM: where it lies, how it is allocated, and the e820 map the guest is told about.

use vm_memory::mmap::FromRangesError;
use vm_memory::GuestAddress;

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
    /// The host could not map the memory.
    #[error("cannot allocate {} MiB of guest memory", .size >> 20)]
    Allocate {
        /// Requested size in bytes.
        size: u64,
        /// What `vm-memory` reported.
        #[source]
        source: FromRangesError,
    },
}

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

/// Allocates `mem_size` bytes of anonymous guest memory laid out by [`ram_regions`].
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, Error> {
    check_mem_size(mem_size)?;
    GuestMemoryMmap::from_ranges(&ram_regions(mem_size)).map_err(|source| Error::Allocate {
        size: mem_size,
        source,
    })
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
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

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
            create_guest_memory(0),
            Err(Error::TooSmall { size: 0 })
        ));
        assert!(matches!(
            create_guest_memory(2 * MIB),
            Err(Error::TooSmall { .. })
        ));
        assert!(matches!(
            create_guest_memory(MIN_MEM_SIZE + 1),
            Err(Error::NotPageAligned { .. })
        ));
        assert!(matches!(
            create_guest_memory(!(PAGE_SIZE - 1)),
            Err(Error::TooLarge { .. })
        ));
        let msg = Error::TooSmall { size: 2 * MIB }.to_string();
        assert!(msg.contains("2048 KiB") && msg.contains("8 MiB"), "{msg}");
    }

    #[test]
    fn create_small_memory() {
        let mem = create_guest_memory(MIN_MEM_SIZE).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress(MIN_MEM_SIZE - 1));
    }

    #[test]
    fn create_memory_straddling_gap() {
        // Anonymous mappings are lazily backed, so this costs no real memory.
        let mem = create_guest_memory(3 * GIB + 16 * MIB).unwrap();
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
