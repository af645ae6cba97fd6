//! The boot GDT and the segment register values derived from it.
//!
//! Descriptor format: Intel SDM Vol. 3A §3.4.5 "Segment Descriptors" (and §7.2.3 for the TSS
//! descriptor). KVM takes segment registers as decoded fields, so [`segment_from_entry`] turns a
//! descriptor into those fields; the VMM copies a [`Segment`] into `kvm_segment` one to one.

use vm_memory::{Bytes, GuestMemoryError};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START};
use crate::GuestMemoryMmap;

/// Errors from writing the GDT and IDT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory does not hold the GDT area.
    #[error("cannot write the boot GDT to guest memory")]
    WriteGdt(#[source] GuestMemoryError),
    /// Guest memory does not hold the IDT area.
    #[error("cannot write the boot IDT to guest memory")]
    WriteIdt(#[source] GuestMemoryError),
}

/// Builds a segment descriptor from `flags` (bits 0-7: access byte — type, S, DPL, P; bits
/// 12-15: AVL, L, D/B, G), a 32-bit `base` and a 20-bit `limit` (SDM Vol. 3A Figure 3-8).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// GDT index of the null descriptor.
pub const NULL_INDEX: u8 = 0;
/// GDT index of the 64-bit code segment.
pub const CODE64_INDEX: u8 = 1;
/// GDT index of the flat 4 GiB data segment.
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u8 = 3;
/// GDT index of the 32-bit code segment (PVH entry runs in protected mode).
pub const CODE32_INDEX: u8 = 4;

/// Selector of the 64-bit code segment, for `%cs` at the 64-bit entry point.
pub const CODE64_SELECTOR: u16 = CODE64_INDEX as u16 * 8;
/// Selector of the data segment, for `%ds`, `%es`, `%fs`, `%gs`, `%ss`.
pub const DATA_SELECTOR: u16 = DATA_INDEX as u16 * 8;
/// Selector of the TSS, for `%tr`.
pub const TSS_SELECTOR: u16 = TSS_INDEX as u16 * 8;
/// Selector of the 32-bit code segment, for `%cs` at the PVH entry point.
pub const CODE32_SELECTOR: u16 = CODE32_INDEX as u16 * 8;

/// The boot GDT, written at [`BOOT_GDT_START`]. All segments are flat (base 0, limit 4 GiB):
///
/// | selector | flags  | segment                                                   |
/// |----------|--------|-----------------------------------------------------------|
/// | 0x00     |        | null                                                      |
/// | 0x08     | 0xa09b | code, execute/read, accessed, L=1 (64-bit), G=1           |
/// | 0x10     | 0xc093 | data, read/write, accessed, D/B=1 (32-bit stack), G=1     |
/// | 0x18     | 0x808b | TSS, 32/64-bit busy (type 0xb), S=0, G=1                  |
/// | 0x20     | 0xc09b | code, execute/read, accessed, D=1 (32-bit), G=1           |
///
/// The TSS descriptor is the legacy 8-byte form: KVM loads `%tr` from the decoded
/// [`Segment`], never from this table, and the guest kernel installs its own GDT and TSS
/// before it needs one.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

/// `GDTR.limit` for [`BOOT_GDT`]: size in bytes minus one.
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;
/// `IDTR.limit` for the single empty descriptor at [`BOOT_IDT_START`].
pub const BOOT_IDT_LIMIT: u16 = 8 - 1;

const _: () = assert!(BOOT_GDT_START.0 + BOOT_GDT.len() as u64 * 8 <= BOOT_IDT_START.0);

/// A segment register as KVM's `kvm_segment` holds it (base, byte-granular limit, selector and
/// the descriptor's attribute bits, one field each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Segment base address.
    pub base: u64,
    /// Limit in bytes (already scaled by 4 KiB when G is set).
    pub limit: u32,
    /// Selector: GDT index * 8 (TI=0, RPL=0).
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B).
    pub db: u8,
    /// Descriptor type: 1 = code/data, 0 = system.
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity: limit in 4 KiB units.
    pub g: u8,
    /// Available for software.
    pub avl: u8,
    /// KVM's "unusable" flag: set for a not-present descriptor.
    pub unusable: u8,
}

/// Decodes the descriptor `entry`, found at `table_index` in the GDT, into a [`Segment`]
/// (SDM Vol. 3A §3.4.5).
pub fn segment_from_entry(entry: u64, table_index: u8) -> Segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let present = bit(47);
    Segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
    }
}

/// The boot segment at GDT index `index` (one of the `*_INDEX` constants), decoded.
pub fn boot_segment(index: u8) -> Option<Segment> {
    BOOT_GDT
        .get(usize::from(index))
        .map(|&entry| segment_from_entry(entry, index))
}

/// Writes [`BOOT_GDT`] at [`BOOT_GDT_START`] and one zero IDT descriptor (8 bytes) at
/// [`BOOT_IDT_START`], little-endian.
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let mut gdt = [0u8; BOOT_GDT.len() * 8];
    for (chunk, entry) in gdt.chunks_exact_mut(8).zip(BOOT_GDT) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&gdt, BOOT_GDT_START)
        .map_err(Error::WriteGdt)?;
    mem.write_obj(0u64, BOOT_IDT_START)
        .map_err(Error::WriteIdt)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::guest_mem;
    use crate::GuestAddress;
    use vm_memory::Address;

    #[test]
    fn encodes_known_descriptors() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0, 0, 0), 0);
        // Base bits are split 0-23 / 24-31.
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn decodes_segments() {
        let code = segment_from_entry(BOOT_GDT[1], 1);
        assert_eq!(
            code,
            Segment {
                base: 0,
                limit: 0xffff_ffff,
                selector: 0x08,
                type_: 0xb,
                present: 1,
                dpl: 0,
                db: 0,
                s: 1,
                l: 1,
                g: 1,
                avl: 0,
                unusable: 0,
            }
        );
        let data = segment_from_entry(BOOT_GDT[2], 2);
        assert_eq!(
            (data.selector, data.type_, data.db, data.l, data.s),
            (0x10, 3, 1, 0, 1)
        );
        let tss = segment_from_entry(BOOT_GDT[3], 3);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.present),
            (0x18, 0xb, 0, 1)
        );
        let code32 = boot_segment(CODE32_INDEX).unwrap();
        assert_eq!(
            (code32.selector, code32.db, code32.l, code32.type_),
            (0x20, 1, 0, 0xb)
        );
        assert_eq!(code32.limit, 0xffff_ffff);
        let null = segment_from_entry(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
        assert!(boot_segment(5).is_none());

        let odd = segment_from_entry(gdt_entry(0xf0f3, 0x1234_5678, 0xabcde), 40);
        assert_eq!(odd.base, 0x1234_5678);
        assert_eq!(odd.limit, 0xabcd_efff);
        assert_eq!((odd.dpl, odd.avl, odd.selector), (3, 1, 320));
        let byte_granular = segment_from_entry(gdt_entry(0x0093, 0, 0xabcde), 2);
        assert_eq!(byte_granular.limit, 0xabcde);
    }

    #[test]
    fn selectors() {
        assert_eq!(
            (
                CODE64_SELECTOR,
                DATA_SELECTOR,
                TSS_SELECTOR,
                CODE32_SELECTOR
            ),
            (0x08, 0x10, 0x18, 0x20)
        );
        assert_eq!(BOOT_GDT_LIMIT, 39);
    }

    #[test]
    fn writes_gdt_and_idt() {
        let mem = guest_mem(1 << 20);
        mem.write_obj(u64::MAX, BOOT_IDT_START).unwrap();
        write_gdt_and_idt(&mem).unwrap();
        for (i, &entry) in BOOT_GDT.iter().enumerate() {
            let got: u64 = mem
                .read_obj(BOOT_GDT_START.unchecked_add(i as u64 * 8))
                .unwrap();
            assert_eq!(got, entry);
        }
        assert_eq!(mem.read_obj::<u64>(BOOT_IDT_START).unwrap(), 0);
        let tiny = crate::GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert!(matches!(write_gdt_and_idt(&tiny), Err(Error::WriteGdt(_))));
    }
}
