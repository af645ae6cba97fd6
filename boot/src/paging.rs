//! Identity-mapped page tables for the 64-bit entry point.
//!
//! The Linux 64-bit boot protocol starts the kernel with paging on, and "the range with
//! setup_header.init_size from start address of loaded kernel and zero page and command line
//! buffer get ident mapping" (Documentation/x86/boot.rst, "64-bit Boot Protocol"). We identity-map the whole first 4 GiB
//! with 2 MiB pages: one PML4 entry → one PDPT with 4 entries → 4 page directories of 512
//! entries each (Intel SDM Vol. 3A §4.5, "4-Level Paging").

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{PDE_COUNT, PDE_START, PDPTE_START, PML4_START};
use crate::GuestMemoryMmap;

/// Page-table entry bit 0: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit 1: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry bit 7: maps a 2 MiB page instead of pointing to a page table.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;

/// CR0.PE: protected mode (SDM Vol. 3A §2.5).
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.PG: paging (SDM Vol. 3A §2.5).
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode (SDM Vol. 3A §2.5).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable (SDM Vol. 3A §2.2.1).
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (SDM Vol. 3A §2.2.1).
pub const EFER_LMA: u64 = 1 << 10;

/// Size of a page table and of the pages it is made of.
const TABLE_SIZE: usize = 0x1000;
/// Entries in one table.
const ENTRIES: usize = 512;
/// Bytes mapped by one page-directory entry.
const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Errors from writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory does not hold the page-table area.
    #[error("cannot write the boot page tables to guest memory")]
    WritePageTables(#[source] GuestMemoryError),
}

fn write_table(mem: &GuestMemoryMmap, at: GuestAddress, entries: &[u64]) -> Result<(), Error> {
    let mut table = vec![0u8; entries.len().div_ceil(ENTRIES) * TABLE_SIZE];
    for (chunk, entry) in table.chunks_exact_mut(8).zip(entries) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&table, at).map_err(Error::WritePageTables)
}

/// Writes the PML4 at [`PML4_START`], the PDPT at [`PDPTE_START`] and [`PDE_COUNT`] page
/// directories from [`PDE_START`], identity-mapping `[0, 4 GiB)` with 2 MiB pages
/// (present | writable | page size = 0x83; upper levels present | writable = 0x03). Unused
/// entries are zeroed. Returns the PML4 address, the value for `%cr3`.
pub fn setup_identity_paging(mem: &GuestMemoryMmap) -> Result<GuestAddress, Error> {
    let upper = PTE_PRESENT | PTE_WRITABLE;
    write_table(mem, PML4_START, &[PDPTE_START.raw_value() | upper])?;
    let pdpt: Vec<u64> = (0..PDE_COUNT)
        .map(|i| (PDE_START.raw_value() + i * TABLE_SIZE as u64) | upper)
        .collect();
    write_table(mem, PDPTE_START, &pdpt)?;
    let pds: Vec<u64> = (0..PDE_COUNT * ENTRIES as u64)
        .map(|i| (i * LARGE_PAGE_SIZE) | upper | PTE_PAGE_SIZE)
        .collect();
    write_table(mem, PDE_START, &pds)?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::guest_mem;

    fn entry(mem: &GuestMemoryMmap, table: GuestAddress, index: u64) -> u64 {
        mem.read_obj(table.unchecked_add(index * 8)).unwrap()
    }

    /// Walks the tables as the MMU would for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: GuestAddress, va: u64) -> Option<u64> {
        let mask = 0x000f_ffff_ffff_f000;
        let pml4e = entry(mem, cr3, (va >> 39) & 0x1ff);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = entry(mem, GuestAddress(pml4e & mask), (va >> 30) & 0x1ff);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = entry(mem, GuestAddress(pdpte & mask), (va >> 21) & 0x1ff);
        if pde & PTE_PRESENT == 0 || pde & PTE_PAGE_SIZE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_4g() {
        let mem = guest_mem(1 << 20);
        // Stale data must be cleared.
        mem.write_obj(u64::MAX, PML4_START.unchecked_add(8))
            .unwrap();
        let cr3 = setup_identity_paging(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        assert_eq!(entry(&mem, PML4_START, 0), 0xa003);
        assert_eq!(entry(&mem, PML4_START, 1), 0);
        assert_eq!(entry(&mem, PDPTE_START, 0), 0xb003);
        assert_eq!(entry(&mem, PDPTE_START, 3), 0xe003);
        assert_eq!(entry(&mem, PDPTE_START, 4), 0);
        assert_eq!(entry(&mem, PDE_START, 0), 0x83);
        assert_eq!(entry(&mem, PDE_START, 1), 0x20_0083);
        assert_eq!(entry(&mem, PDE_START, 2047), 0xffe0_0083);
        for va in [0, 0x7000, 0x10_0200, 0x1234_5678, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        assert!(setup_identity_paging(&mem).is_err());
    }
}
