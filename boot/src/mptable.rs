//! The Intel MultiProcessor Specification 1.4 tables, by which the guest finds its CPUs, its
//! IOAPIC and how legacy IRQs reach it (no ACPI needed).
//!
//! At [`EBDA_START`] we write the MP floating pointer structure (MP spec §4.1), and right after it
//! the MP configuration table (§4.2): a header, then the base entries in the order §4.3
//! requires — processors, bus, I/O APIC, I/O interrupt assignments, local interrupt assignments.
//! Linux finds the floating pointer by scanning the last KiB of base memory
//! (arch/x86/kernel/mpparse.c `find_smp_config`).

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestMemoryError};

use crate::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_NUM_PINS, IOAPIC_START};
use crate::GuestMemoryMmap;

/// Most vCPUs the MP table can describe: APIC IDs are 8 bits, 0xff is the broadcast ID, and the
/// IOAPIC takes the ID after the last CPU, so CPUs get 0..=253 and the IOAPIC 254.
pub const MAX_SUPPORTED_CPUS: u8 = 254;

/// Floating pointer signature (§4.1).
const SMP_MAGIC_IDENT: [u8; 4] = *b"_MP_";
/// Configuration table signature (§4.2).
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// Specification revision 1.4 (§4.1 and §4.2, "SPEC_REV").
const MPC_SPEC: u8 = 4;
/// OEM ID, 8 bytes space padded (§4.2).
const MPC_OEM: [u8; 8] = *b"RUSTVMM ";
/// Product ID, 12 bytes space padded (§4.2).
const MPC_PRODUCT_ID: [u8; 12] = *b"KVM GUEST   ";
/// Bus type string of an ISA bus, 6 bytes space padded (§4.3.2, Table 4-8).
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";
/// ID of the one bus we describe.
const BUS_ID_ISA: u8 = 0;

/// Base entry types (§4.3, Table 4-3).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

/// Local APIC version of the processor entries (integrated APIC, as KVM's LAPIC reports).
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version (KVM's in-kernel IOAPIC reports 0x11).
const IOAPIC_VERSION: u8 = 0x11;
/// Processor entry flag: processor usable (§4.3.1, "EN").
const CPU_ENABLED: u8 = 1 << 0;
/// Processor entry flag: bootstrap processor (§4.3.1, "BP").
const CPU_BOOTPROCESSOR: u8 = 1 << 1;
/// CPU signature: family 6, model 0, stepping 0 (§4.3.1, Table 4-5).
const CPU_STEPPING: u32 = 0x600;
/// Feature flags (CPUID.1:EDX): on-chip FPU (bit 0) and APIC (bit 9) (§4.3.1, Table 4-6).
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;
/// I/O APIC flag: usable (§4.3.3, "EN").
const MPC_APIC_USABLE: u8 = 1;
/// Interrupt types (§4.3.4, Table 4-11).
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the bus" (§4.3.4, PO = 00, EL = 00).
const MP_IRQFLAG_DEFAULT: u16 = 0;
/// Destination "all local APICs" of a local interrupt entry (§4.3.5).
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure (§4.1, Figure 4-2), 16 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpfIntel {
    /// "_MP_".
    pub signature: [u8; 4],
    /// Physical address of the configuration table.
    pub physptr: u32,
    /// Length in 16-byte paragraphs: 1.
    pub length: u8,
    /// Specification revision: 4.
    pub specification: u8,
    /// Makes the 16 bytes sum to zero.
    pub checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    pub feature1: u8,
    /// Bit 7 (IMCRP) clear: virtual wire mode, no IMCR.
    pub feature2: u8,
    /// Reserved.
    pub feature3: [u8; 3],
}

/// MP configuration table header (§4.2, Figure 4-3), 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcTable {
    /// "PCMP".
    pub signature: [u8; 4],
    /// Length of the base table, header included.
    pub length: u16,
    /// Specification revision: 4.
    pub spec: u8,
    /// Makes the base table sum to zero.
    pub checksum: u8,
    /// OEM ID.
    pub oem: [u8; 8],
    /// Product ID.
    pub productid: [u8; 12],
    /// OEM table pointer (0: none).
    pub oemptr: u32,
    /// OEM table size.
    pub oemsize: u16,
    /// Number of base entries.
    pub oemcount: u16,
    /// Local APIC MMIO address.
    pub lapic: u32,
    /// Extended table length (0: none).
    pub ext_length: u16,
    /// Extended table checksum.
    pub ext_checksum: u8,
    /// Reserved.
    pub reserved: u8,
}

/// Processor entry (§4.3.1, Figure 4-5), 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcCpu {
    /// 0.
    pub type_: u8,
    /// Local APIC ID.
    pub apicid: u8,
    /// Local APIC version.
    pub apicver: u8,
    /// EN and BP flags.
    pub cpuflag: u8,
    /// CPU signature (stepping, model, family).
    pub cpufeature: u32,
    /// CPUID.1:EDX feature flags.
    pub featureflag: u32,
    /// Reserved.
    pub reserved: [u32; 2],
}

/// Bus entry (§4.3.2, Figure 4-6), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcBus {
    /// 1.
    pub type_: u8,
    /// Bus ID.
    pub busid: u8,
    /// Bus type string.
    pub bustype: [u8; 6],
}

/// I/O APIC entry (§4.3.3, Figure 4-7), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcIoapic {
    /// 2.
    pub type_: u8,
    /// I/O APIC ID.
    pub apicid: u8,
    /// I/O APIC version.
    pub apicver: u8,
    /// EN flag.
    pub flags: u8,
    /// MMIO address.
    pub apicaddr: u32,
}

/// I/O interrupt assignment entry (§4.3.4, Figure 4-8), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcIntsrc {
    /// 3.
    pub type_: u8,
    /// Interrupt type (INT, NMI, SMI, ExtINT).
    pub irqtype: u8,
    /// Polarity and trigger mode.
    pub irqflag: u16,
    /// Source bus ID.
    pub srcbus: u8,
    /// IRQ on the source bus.
    pub srcbusirq: u8,
    /// Destination I/O APIC ID.
    pub dstapic: u8,
    /// Destination I/O APIC input pin.
    pub dstirq: u8,
}

/// Local interrupt assignment entry (§4.3.5, Figure 4-9), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcLintsrc {
    /// 4.
    pub type_: u8,
    /// Interrupt type (INT, NMI, SMI, ExtINT).
    pub irqtype: u8,
    /// Polarity and trigger mode.
    pub irqflag: u16,
    /// Source bus ID.
    pub srcbusid: u8,
    /// IRQ on the source bus.
    pub srcbusirq: u8,
    /// Destination local APIC ID (0xff: all).
    pub destapic: u8,
    /// Destination LINTIN pin (0 or 1).
    pub destapiclint: u8,
}

// SAFETY: MpfIntel is repr(C, packed), made only of integers and integer arrays: it has no
// padding and every byte pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: as for MpfIntel: repr(C, packed), integers only, no padding, any bytes valid.
unsafe impl ByteValued for MpcLintsrc {}

// Sizes from the MP spec figures.
const _: () = assert!(size_of::<MpfIntel>() == 16);
const _: () = assert!(size_of::<MpcTable>() == 44);
const _: () = assert!(size_of::<MpcCpu>() == 20);
const _: () = assert!(size_of::<MpcBus>() == 8);
const _: () = assert!(size_of::<MpcIoapic>() == 8);
const _: () = assert!(size_of::<MpcIntsrc>() == 8);
const _: () = assert!(size_of::<MpcLintsrc>() == 8);
// The largest table stays below 1 MiB (in the EBDA and the legacy hole, both reserved in e820).
const _: () = assert!(EBDA_START.0 + mptable_size(MAX_SUPPORTED_CPUS) as u64 <= HIMEM_START.0);

/// Errors from building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Zero vCPUs.
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than APIC IDs.
    #[error("{num_cpus} vCPUs requested but at most {MAX_SUPPORTED_CPUS} are supported (8-bit APIC IDs)")]
    TooManyCpus {
        /// Requested vCPU count.
        num_cpus: u8,
    },
    /// Guest memory does not hold the table.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// Bytes taken by the floating pointer and the configuration table for `num_cpus` CPUs.
const fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + size_of::<MpcCpu>() * num_cpus as usize
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + size_of::<MpcIntsrc>() * IOAPIC_NUM_PINS as usize
        + size_of::<MpcLintsrc>() * 2
}

/// The value that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)))
}

/// Writes the MP floating pointer and configuration table at [`EBDA_START`]: one processor
/// entry per vCPU (APIC ID = index, CPU 0 the bootstrap processor), an ISA bus, the IOAPIC
/// (ID `num_cpus`, at [`IOAPIC_START`]), ISA IRQs 0..[`IOAPIC_NUM_PINS`] routed to the same
/// IOAPIC pin (as KVM's default GSI routing does), and LINT0 = ExtINT on the BSP, LINT1 = NMI on
/// all CPUs (the virtual wire setup of MP spec §3.6.2.2, as SeaBIOS and Firecracker describe it).
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), Error> {
    if num_cpus == 0 {
        return Err(Error::NoCpus);
    }
    if num_cpus > MAX_SUPPORTED_CPUS {
        return Err(Error::TooManyCpus { num_cpus });
    }
    let ioapic_id = num_cpus;
    let table_start = EBDA_START.0 + size_of::<MpfIntel>() as u64;

    // Entries first, so the header can carry their count and length.
    let mut entries = Vec::with_capacity(mptable_size(num_cpus));
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        push(
            MpcCpu {
                type_: MP_PROCESSOR,
                apicid: cpu,
                apicver: APIC_VERSION,
                cpuflag: CPU_ENABLED | bsp,
                cpufeature: CPU_STEPPING,
                featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        MpcBus {
            type_: MP_BUS,
            busid: BUS_ID_ISA,
            bustype: BUS_TYPE_ISA,
        }
        .as_slice(),
    );
    push(
        MpcIoapic {
            type_: MP_IOAPIC,
            apicid: ioapic_id,
            apicver: IOAPIC_VERSION,
            flags: MPC_APIC_USABLE,
            apicaddr: IOAPIC_START.0 as u32,
        }
        .as_slice(),
    );
    for irq in 0..IOAPIC_NUM_PINS {
        push(
            MpcIntsrc {
                type_: MP_INTSRC,
                irqtype: MP_IRQ_INT,
                irqflag: MP_IRQFLAG_DEFAULT,
                srcbus: BUS_ID_ISA,
                srcbusirq: irq,
                dstapic: ioapic_id,
                dstirq: irq,
            }
            .as_slice(),
        );
    }
    for (irqtype, destapic, lint) in [(MP_IRQ_EXTINT, 0, 0), (MP_IRQ_NMI, ALL_LOCAL_APICS, 1)] {
        push(
            MpcLintsrc {
                type_: MP_LINTSRC,
                irqtype,
                irqflag: MP_IRQFLAG_DEFAULT,
                srcbusid: BUS_ID_ISA,
                srcbusirq: 0,
                destapic,
                destapiclint: lint,
            }
            .as_slice(),
        );
    }

    let mut header = MpcTable {
        signature: MPC_SIGNATURE,
        length: (size_of::<MpcTable>() + entries.len()) as u16,
        spec: MPC_SPEC,
        checksum: 0,
        oem: MPC_OEM,
        productid: MPC_PRODUCT_ID,
        oemcount: count,
        lapic: APIC_START.0 as u32,
        ..Default::default()
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..size_of::<MpcTable>()].copy_from_slice(header.as_slice());

    let mut mpf = MpfIntel {
        signature: SMP_MAGIC_IDENT,
        physptr: table_start as u32,
        length: 1,
        specification: MPC_SPEC,
        ..Default::default()
    };
    mpf.checksum = checksum(mpf.as_slice());

    let mut all = mpf.as_slice().to_vec();
    all.extend_from_slice(&table);
    debug_assert_eq!(all.len(), mptable_size(num_cpus));
    mem.write_slice(&all, EBDA_START).map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LOW_RAM_END;
    use crate::test_util::guest_mem;
    use crate::GuestAddress;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    struct Parsed {
        cpus: Vec<MpcCpu>,
        buses: Vec<MpcBus>,
        ioapics: Vec<MpcIoapic>,
        intsrcs: Vec<MpcIntsrc>,
        lintsrcs: Vec<MpcLintsrc>,
        header: MpcTable,
    }

    /// Finds and parses the MP table the way a guest would, checking both checksums.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let mut ebda = vec![0u8; (LOW_RAM_END.0 - EBDA_START.0) as usize];
        mem.read_slice(&mut ebda, EBDA_START).unwrap();
        let off = (0..ebda.len())
            .step_by(16)
            .find(|&o| ebda[o..o + 4] == *b"_MP_")
            .expect("no _MP_ floating pointer in the EBDA");
        assert_eq!(sum(&ebda[off..off + 16]), 0, "floating pointer checksum");
        let mpf = MpfIntel::from_slice(&ebda[off..off + 16]).copied().unwrap();
        assert_eq!(mpf.length, 1);
        assert_eq!(mpf.specification, 4);
        assert_eq!(mpf.feature1, 0);

        let table_addr = GuestAddress(u64::from(mpf.physptr));
        let header: MpcTable = mem.read_obj(table_addr).unwrap();
        assert_eq!(header.signature, *b"PCMP");
        let mut table = vec![0u8; usize::from(header.length)];
        mem.read_slice(&mut table, table_addr).unwrap();
        assert_eq!(sum(&table), 0, "configuration table checksum");

        let mut p = Parsed {
            cpus: vec![],
            buses: vec![],
            ioapics: vec![],
            intsrcs: vec![],
            lintsrcs: vec![],
            header,
        };
        let mut at = size_of::<MpcTable>();
        for _ in 0..header.oemcount {
            let rest = &table[at..];
            at += match rest[0] {
                0 => {
                    p.cpus.push(*MpcCpu::from_slice(&rest[..20]).unwrap());
                    20
                }
                1 => {
                    p.buses.push(*MpcBus::from_slice(&rest[..8]).unwrap());
                    8
                }
                2 => {
                    p.ioapics.push(*MpcIoapic::from_slice(&rest[..8]).unwrap());
                    8
                }
                3 => {
                    p.intsrcs.push(*MpcIntsrc::from_slice(&rest[..8]).unwrap());
                    8
                }
                4 => {
                    p.lintsrcs
                        .push(*MpcLintsrc::from_slice(&rest[..8]).unwrap());
                    8
                }
                t => panic!("unknown entry type {t}"),
            };
        }
        assert_eq!(at, table.len(), "entries fill the table exactly");
        p
    }

    #[test]
    fn tables_for_various_cpu_counts() {
        for num_cpus in [1u8, 2, 4, 64, MAX_SUPPORTED_CPUS] {
            let mem = guest_mem(2 << 20);
            setup_mptable(&mem, num_cpus).unwrap();
            let p = parse(&mem);
            assert_eq!({ p.header.lapic }, 0xfee0_0000);
            assert_eq!(p.header.spec, 4);

            assert_eq!(p.cpus.len(), usize::from(num_cpus));
            for (i, cpu) in p.cpus.iter().enumerate() {
                assert_eq!(usize::from(cpu.apicid), i);
                assert_eq!(cpu.apicver, 0x14);
                assert_eq!(cpu.cpuflag & CPU_ENABLED, CPU_ENABLED);
                assert_eq!(
                    cpu.cpuflag & CPU_BOOTPROCESSOR != 0,
                    i == 0,
                    "BSP flag of cpu {i}"
                );
            }

            assert_eq!(p.buses.len(), 1);
            assert_eq!(p.buses[0].bustype, *b"ISA   ");

            assert_eq!(p.ioapics.len(), 1);
            let ioapic = p.ioapics[0];
            assert_eq!(ioapic.apicid, num_cpus);
            assert_eq!(ioapic.apicver, 0x11);
            assert_eq!(ioapic.flags, 1);
            assert_eq!({ ioapic.apicaddr }, 0xfec0_0000);

            assert_eq!(p.intsrcs.len(), 24);
            for (i, src) in p.intsrcs.iter().enumerate() {
                assert_eq!((src.irqtype, src.srcbus, src.dstapic), (0, 0, num_cpus));
                assert_eq!(
                    (usize::from(src.srcbusirq), usize::from(src.dstirq)),
                    (i, i)
                );
            }

            assert_eq!(p.lintsrcs.len(), 2);
            let (l0, l1) = (p.lintsrcs[0], p.lintsrcs[1]);
            assert_eq!((l0.irqtype, l0.destapic, l0.destapiclint), (3, 0, 0));
            assert_eq!((l1.irqtype, l1.destapic, l1.destapiclint), (1, 0xff, 1));
        }
    }

    #[test]
    fn checksum_makes_zero() {
        let bytes = [1u8, 2, 250, 77];
        let mut with = bytes.to_vec();
        with.push(checksum(&bytes));
        assert_eq!(sum(&with), 0);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let mem = guest_mem(2 << 20);
        assert!(matches!(setup_mptable(&mem, 0), Err(Error::NoCpus)));
        let err = setup_mptable(&mem, 255).unwrap_err();
        assert!(matches!(err, Error::TooManyCpus { num_cpus: 255 }));
        assert!(err.to_string().contains("254"), "{err}");
        let small = guest_mem(0x9_0000);
        assert!(matches!(setup_mptable(&small, 1), Err(Error::Write(_))));
    }
}
