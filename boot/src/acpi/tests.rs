use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::layout::{FIRST_VIRTIO_IRQ, VIRTIO_MMIO_SIZE_EACH, VIRTIO_MMIO_START};
use crate::mptable::{setup_mptable, MpcTable, MpfIntel};
use crate::test_util::guest_mem;

/// Guest memory that holds the ACPI area (and the MP table).
fn mem() -> GuestMemoryMmap {
    guest_mem(2 << 20)
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// `n` virtio-mmio windows laid out as the VMM lays them out, one GSI each.
fn virtio(n: u32) -> Vec<(u64, u64, u32)> {
    (0..n)
        .map(|i| {
            (
                VIRTIO_MMIO_START.0 + u64::from(i) * VIRTIO_MMIO_SIZE_EACH,
                VIRTIO_MMIO_SIZE_EACH,
                FIRST_VIRTIO_IRQ + i,
            )
        })
        .collect()
}

fn config(cpus: u8, virtio_devices: u32) -> AcpiConfig {
    AcpiConfig {
        cpus,
        virtio_mmio: virtio(virtio_devices),
    }
}

/// One table as a guest reads it: `bytes` is as long as its header's length field says.
struct Table {
    addr: u64,
    bytes: Vec<u8>,
}

impl Table {
    fn end(&self) -> u64 {
        self.addr + self.bytes.len() as u64
    }
}

/// The tables as a guest finds them, from the RSDP on.
struct Tables {
    rsdp: Table,
    xsdt: Table,
    fadt: Table,
    madt: Table,
    dsdt: Table,
}

/// Reads the table at `addr`, checking its signature, that its length field covers at least the
/// header, that it lies in the ACPI area, and that it sums to zero.
fn read_table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Table {
    let mut header = [0u8; SDT_HEADER_LEN as usize];
    mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
    assert_eq!(
        &header[..4],
        signature,
        "signature of the table at {addr:#x}"
    );
    let len = u32_at(&header, 4);
    assert!(len >= SDT_HEADER_LEN, "{signature:?} length {len}");
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    let name = String::from_utf8_lossy(signature);
    assert_eq!(sum(&bytes), 0, "checksum of {name}");
    assert_eq!(&bytes[10..16], b"VMM   ", "OEM ID");
    let table = Table { addr, bytes };
    assert!(
        ACPI_START.0 <= addr && table.end() <= ACPI_START.0 + ACPI_SIZE,
        "{name} at [{addr:#x}, {:#x}) is outside the ACPI area",
        table.end()
    );
    table
}

/// Finds the RSDP the way Linux does without a boot-protocol pointer: the first 16-byte aligned
/// "RSD PTR " in `[0xe0000, 1 MiB)` whose first 20 bytes sum to zero.
fn scan_for_rsdp(mem: &GuestMemoryMmap) -> u64 {
    let start = 0xe_0000u64;
    let mut window = vec![0u8; (0x10_0000 - start) as usize];
    mem.read_slice(&mut window, GuestAddress(start)).unwrap();
    let off = (0..window.len() - 20)
        .step_by(16)
        .find(|&o| &window[o..o + 8] == b"RSD PTR " && sum(&window[o..o + 20]) == 0)
        .expect("no RSDP in [0xe0000, 1 MiB)");
    start + off as u64
}

/// Parses every table from the RSDP at `rsdp_addr` on.
fn parse(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> Tables {
    let mut rsdp = vec![0u8; 36];
    mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum (the ACPI 1.0 part)");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"VMM   ", "RSDP OEM ID");
    assert_eq!(rsdp[15], 2, "RSDP revision: 2, with an XSDT");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    let rsdp = Table {
        addr: rsdp_addr.0,
        bytes: rsdp,
    };

    let xsdt = read_table(mem, u64_at(&rsdp.bytes, 24), b"XSDT");
    let entries: Vec<u64> = xsdt.bytes[36..]
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("whole 8-byte XSDT entries")))
        .collect();
    assert_eq!(entries.len(), 2, "the XSDT lists the FADT and the MADT");
    let fadt = read_table(mem, entries[0], b"FACP");
    let madt = read_table(mem, entries[1], b"APIC");
    assert_eq!(u32_at(&fadt.bytes, 40), 0, "no 32-bit DSDT pointer");
    let dsdt = read_table(mem, u64_at(&fadt.bytes, 140), b"DSDT");

    let tables = Tables {
        rsdp,
        xsdt,
        fadt,
        madt,
        dsdt,
    };
    let all = [
        &tables.rsdp,
        &tables.xsdt,
        &tables.fadt,
        &tables.madt,
        &tables.dsdt,
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(
                a.end() <= b.addr || b.end() <= a.addr,
                "tables at {:#x} and {:#x} overlap",
                a.addr,
                b.addr
            );
        }
    }
    tables
}

/// Decodes an AML PkgLength at `bytes[at..]` (ACPI 6.5 §20.2.4): its value (which counts its
/// own bytes) and the number of bytes it takes.
fn pkg_length(bytes: &[u8], at: usize) -> (usize, usize) {
    let lead = bytes[at];
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return (usize::from(lead & 0x3f), 1);
    }
    let mut len = usize::from(lead & 0x0f);
    for i in 0..follow {
        len |= usize::from(bytes[at + 1 + i]) << (4 + 8 * i);
    }
    (len, follow + 1)
}

/// The MADT's interrupt controller structures: `(type, bytes)`, each as long as its length byte.
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut entries = Vec::new();
    let mut at = MADT_FIXED_LEN as usize;
    while at < madt.len() {
        let len = usize::from(madt[at + 1]);
        assert!(len >= 2 && at + len <= madt.len(), "MADT entry at {at}");
        entries.push((madt[at], &madt[at..at + len]));
        at += len;
    }
    entries
}

/// The MP table's IOAPIC ID and its I/O interrupt entries `(ISA IRQ, IOAPIC ID, pin)`.
fn mp_ioapic_and_routing(mem: &GuestMemoryMmap) -> (u8, Vec<(u8, u8, u8)>) {
    let mpf: MpfIntel = mem.read_obj(crate::layout::EBDA_START).unwrap();
    let table_addr = GuestAddress(u64::from(mpf.physptr));
    let header: MpcTable = mem.read_obj(table_addr).unwrap();
    let mut table = vec![0u8; usize::from(header.length)];
    mem.read_slice(&mut table, table_addr).unwrap();
    let (mut ioapic, mut routes) = (None, Vec::new());
    let mut at = std::mem::size_of::<MpcTable>();
    while at < table.len() {
        let e = &table[at..];
        match e[0] {
            0 => at += 20,
            2 => {
                ioapic = Some(e[1]);
                at += 8;
            }
            3 => {
                routes.push((e[5], e[6], e[7]));
                at += 8;
            }
            _ => at += 8,
        }
    }
    (ioapic.expect("an IOAPIC entry"), routes)
}

#[test]
fn tables_are_found_checksummed_and_sized_like_a_guest_reads_them() {
    for (cpus, devices) in [(1, 0), (4, 3), (MAX_SUPPORTED_CPUS, 19)] {
        let mem = mem();
        let rsdp = setup_acpi(&mem, &config(cpus, devices)).unwrap();
        assert_eq!(rsdp, ACPI_START);
        assert_eq!(scan_for_rsdp(&mem), rsdp.0, "Linux's scan finds the RSDP");
        // `parse` checks each checksum, that each table lies in [ACPI_START, +ACPI_SIZE) and
        // that none overlaps another.
        let t = parse(&mem, rsdp);

        // Each length field is the table's real size.
        assert_eq!(t.xsdt.bytes.len(), 36 + 2 * 8);
        assert_eq!(t.fadt.bytes.len(), 276, "FADT of ACPI 6.5");
        assert_eq!(
            t.madt.bytes.len(),
            44 + 8 * usize::from(cpus) + 12,
            "MADT header, {cpus} local APICs and one IOAPIC"
        );
        // The DSDT's AML is exactly \_SB_'s Scope and then \_S5_'s Name, filling the table.
        let aml = &t.dsdt.bytes[36..];
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let (scope_len, _) = pkg_length(aml, 1);
        let s5 = 1 + scope_len;
        assert_eq!(&aml[s5..s5 + 6], b"\x08\\_S5_", "NameOp \\_S5_");
        assert_eq!(aml[s5 + 6], 0x12, "PackageOp");
        let (package_len, _) = pkg_length(aml, s5 + 7);
        assert_eq!(s5 + 7 + package_len, aml.len(), "DSDT length field");
    }
}

#[test]
fn xsdt_points_at_the_fadt_and_madt_and_the_fadt_at_the_dsdt() {
    let mem = mem();
    let t = parse(&mem, setup_acpi(&mem, &config(2, 1)).unwrap());
    assert_eq!(u64_at(&t.rsdp.bytes, 24), t.xsdt.addr);
    assert_eq!(u64_at(&t.xsdt.bytes, 36), t.fadt.addr);
    assert_eq!(u64_at(&t.xsdt.bytes, 44), t.madt.addr);
    assert_eq!(u64_at(&t.fadt.bytes, 140), t.dsdt.addr, "X_DSDT");
    assert_eq!(t.xsdt.bytes[8], 1, "XSDT revision");
    assert_eq!(t.dsdt.bytes[8], 2, "DSDT revision: 64-bit AML integers");
}

#[test]
fn madt_has_one_local_apic_per_vcpu_and_agrees_with_the_mp_table() {
    for cpus in [1u8, 4, MAX_SUPPORTED_CPUS] {
        let mem = mem();
        let t = parse(&mem, setup_acpi(&mem, &config(cpus, 2)).unwrap());
        let madt = &t.madt.bytes;
        assert_eq!(madt[8], 5, "MADT revision");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(madt, 40), 1, "flags: PCAT_COMPAT only");

        let entries = madt_entries(madt);
        let lapics: Vec<&[u8]> = entries
            .iter()
            .filter(|(kind, _)| *kind == 0)
            .map(|&(_, e)| e)
            .collect();
        assert_eq!(lapics.len(), usize::from(cpus), "one local APIC per vCPU");
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!(e.len(), 8);
            assert_eq!(usize::from(e[2]), i, "ACPI processor UID");
            assert_eq!(usize::from(e[3]), i, "APIC ID");
            assert_eq!(u32_at(e, 4), 1, "enabled, not merely online capable");
        }
        let ioapics: Vec<&[u8]> = entries
            .iter()
            .filter(|(kind, _)| *kind == 1)
            .map(|&(_, e)| e)
            .collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!(ioapic.len(), 12);
        assert_eq!(ioapic[2], cpus, "IOAPIC ID: the one after the last CPU's");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000, "IOAPIC address");
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        assert_eq!(
            entries.len(),
            usize::from(cpus) + 1,
            "nothing else: no interrupt source override"
        );

        // The MP table, which a guest without ACPI reads, says the same.
        setup_mptable(&mem, cpus).unwrap();
        let (mp_ioapic, routes) = mp_ioapic_and_routing(&mem);
        assert_eq!(mp_ioapic, ioapic[2], "the same IOAPIC ID in both tables");
        assert!(!routes.is_empty());
        for (irq, dst, pin) in routes {
            // Identity routing, so the MADT needs no override (the PIT's IRQ 0 is on pin 0).
            assert_eq!((dst, pin), (mp_ioapic, irq), "MP table route of IRQ {irq}");
        }
    }
}

#[test]
fn fadt_is_hardware_reduced_with_byte_wide_sleep_registers() {
    let mem = mem();
    let t = parse(&mem, setup_acpi(&mem, &config(1, 0)).unwrap());
    let fadt = &t.fadt.bytes;
    assert_eq!(fadt[8], 6, "FADT major revision");
    assert_eq!(fadt[131], 5, "FADT minor revision");
    let flags = u32_at(fadt, 112);
    assert_eq!(
        flags,
        (1 << 20) | (1 << 5) | (1 << 4),
        "HW_REDUCED_ACPI, SLP_BUTTON, PWR_BUTTON: {flags:#x}"
    );
    assert_eq!(
        u16_at(fadt, 109),
        0b11_1100,
        "IAPC_BOOT_ARCH: no VGA, MSI, ASPM or CMOS RTC; no 8042, no legacy devices"
    );
    // Generic Address Structures: SystemIO, 8 bits at offset 0, byte access, the port.
    let gas = |port: u16| {
        let mut g = vec![1u8, 8, 0, 1];
        g.extend_from_slice(&u64::from(port).to_le_bytes());
        g
    };
    assert_eq!(fadt[244..256], gas(0x600), "SLEEP_CONTROL_REG");
    assert_eq!(fadt[256..268], gas(0x600), "SLEEP_STATUS_REG");
    assert_eq!(ACPI_SLEEP_CONTROL_PORT, 0x600);
    assert_eq!(ACPI_SLEEP_STATUS_PORT, 0x600);
    assert_eq!(&fadt[268..276], b"VMM-KVM ", "hypervisor vendor identity");
    assert!(fadt[116..129].iter().all(|&b| b == 0), "no reset register");
    assert_eq!(u16_at(fadt, 46), 0, "no SCI: hardware-reduced");
}

/// The output of `iasl -d` on each of `tables` (a file name and its bytes): ACPICA's own
/// disassembler, so that what is checked is what an ACPI implementation reads, not what this
/// crate meant to write. Fails where `iasl` is missing or reports a bad table.
fn iasl_disassemble(tables: &[(&str, &[u8])]) -> Vec<String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "boot-acpi-iasl-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("iasl");
    cmd.arg("-d").current_dir(&dir);
    for (name, bytes) in tables {
        std::fs::write(dir.join(format!("{name}.dat")), bytes).unwrap();
        cmd.arg(format!("{name}.dat"));
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "cannot run iasl ({e}): install Debian's acpica-tools (resources/install-deps.sh \
                 does), which this test needs to decode the ACPI tables"
            );
        }
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dsl: Vec<Option<String>> = tables
        .iter()
        .map(|(name, _)| std::fs::read_to_string(dir.join(format!("{name}.dsl"))).ok())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "iasl -d failed:\n{log}");
    for bad in ["Incorrect checksum", "Warning", "Error", "too long"] {
        assert!(!log.contains(bad), "iasl reports \"{bad}\":\n{log}");
    }
    dsl.into_iter()
        .zip(tables)
        .map(|(d, (name, _))| {
            let d = d.unwrap_or_else(|| panic!("iasl wrote no {name}.dsl:\n{log}"));
            assert!(!d.contains("Incorrect checksum"), "{d}");
            d
        })
        .collect()
}

/// `text` with every run of whitespace made one space, so that expectations need not copy
/// iasl's column alignment.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How iasl prints a small AML integer.
fn asl_integer(value: usize) -> String {
    match value {
        0 => "Zero".into(),
        1 => "One".into(),
        v => format!("0x{v:02X}"),
    }
}

/// The part of a disassembled DSDT from `Device (name)` up to the next device or the end.
fn device<'a>(dsl: &'a str, name: &str) -> &'a str {
    let start = dsl
        .find(&format!("Device ({name})"))
        .unwrap_or_else(|| panic!("no Device ({name}) in\n{dsl}"));
    let rest = &dsl[start + 1..];
    let end = rest.find("Device (").map_or(dsl.len(), |e| start + 1 + e);
    &dsl[start..end]
}

#[test]
fn iasl_decodes_every_device_of_the_dsdt() {
    let mem = mem();
    let cfg = config(4, 19);
    let t = parse(&mem, setup_acpi(&mem, &cfg).unwrap());
    let dsl = iasl_disassemble(&[("dsdt", &t.dsdt.bytes)]).remove(0);
    let dsl = squash(&dsl);
    assert!(
        dsl.contains(r#"DefinitionBlock ("", "DSDT", 2, "VMM ", "VMMDSDT ", 0x00000001)"#),
        "{dsl}"
    );
    assert!(dsl.contains("Scope (\\_SB)"), "{dsl}");

    let com1 = device(&dsl, "COM1");
    for expected in [
        r#"Name (_HID, EisaId ("PNP0501")"#,
        "Name (_UID, Zero)",
        "IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x01, // Alignment \
         0x08, // Length )",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
    ] {
        assert!(com1.contains(expected), "COM1 lacks {expected}:\n{com1}");
    }

    assert_eq!(dsl.matches(r#""LNRO0005""#).count(), cfg.virtio_mmio.len());
    for (i, &(addr, size, gsi)) in cfg.virtio_mmio.iter().enumerate() {
        let dev = device(&dsl, &format!("V{i:03X}"));
        for expected in [
            r#"Name (_HID, "LNRO0005")"#.to_string(),
            format!("Name (_UID, {})", asl_integer(i)),
            format!(
                "Memory32Fixed (ReadWrite, 0x{addr:08X}, // Address Base 0x{size:08X}, // Address \
                 Length )"
            ),
            format!(
                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ 0x{gsi:08X}, }}"
            ),
        ] {
            assert!(dev.contains(&expected), "V{i:03X} lacks {expected}:\n{dev}");
        }
    }

    let pvpanic = device(&dsl, "PEVT");
    for expected in [
        r#"Name (_HID, "QEMU0001")"#,
        "IO (Decode16, 0x0505, // Range Minimum 0x0505, // Range Maximum 0x01, // Alignment \
         0x01, // Length )",
        "Method (_STA, 0, NotSerialized) // _STA: Status { Return (0x0F) }",
    ] {
        assert!(
            pvpanic.contains(expected),
            "pvpanic lacks {expected}:\n{pvpanic}"
        );
    }

    assert!(
        dsl.contains("Name (\\_S5, Package (0x02) // _S5_: S5 System State { 0x05, Zero })"),
        "no _S5_ package {{5, 0}}:\n{dsl}"
    );
}

#[test]
fn iasl_decodes_the_fadt_and_madt() {
    let mem = mem();
    let t = parse(&mem, setup_acpi(&mem, &config(4, 0)).unwrap());
    let dsl = iasl_disassemble(&[("facp", &t.fadt.bytes), ("apic", &t.madt.bytes)]);
    let (fadt, madt) = (squash(&dsl[0]), squash(&dsl[1]));
    for expected in [
        "Revision : 06".to_string(),
        "FADT Minor Revision : 05".to_string(),
        "Hardware Reduced (V5) : 1".to_string(),
        format!("DSDT Address : {:016X}", t.dsdt.addr),
        "Sleep Control Register : [Generic Address Structure] [0F4h 0244 1] Space ID : 01 \
         [SystemIO] [0F5h 0245 1] Bit Width : 08 [0F6h 0246 1] Bit Offset : 00 [0F7h 0247 1] \
         Encoded Access Width : 01 [Byte Access:8] [0F8h 0248 8] Address : 0000000000000600"
            .to_string(),
        "Sleep Status Register : [Generic Address Structure] [100h 0256 1] Space ID : 01 \
         [SystemIO] [101h 0257 1] Bit Width : 08 [102h 0258 1] Bit Offset : 00 [103h 0259 1] \
         Encoded Access Width : 01 [Byte Access:8] [104h 0260 8] Address : 0000000000000600"
            .to_string(),
    ] {
        assert!(fadt.contains(&expected), "FADT lacks {expected}:\n{fadt}");
    }
    for expected in [
        "Local Apic Address : FEE00000",
        "PC-AT Compatibility : 1",
        "I/O Apic ID : 04",
        "[I/O APIC]",
        "Address : FEC00000",
        "Interrupt : 00000000",
    ] {
        assert!(madt.contains(expected), "MADT lacks {expected}:\n{madt}");
    }
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 4);
    assert_eq!(madt.matches("Processor Enabled : 1").count(), 4);
}

#[test]
fn rejects_what_the_tables_cannot_describe() {
    let mem = mem();
    assert!(matches!(
        setup_acpi(&mem, &config(0, 0)),
        Err(Error::NoCpus)
    ));
    let err = setup_acpi(&mem, &config(255, 0)).unwrap_err();
    assert!(matches!(err, Error::TooManyCpus { cpus: 255 }), "{err}");
    assert!(err.to_string().contains("254"), "{err}");

    for (addr, size) in [
        (0x1_0000_0000, 0x1000),
        (0xffff_f000, 0x2000),
        (u64::MAX, 2),
    ] {
        let cfg = AcpiConfig {
            cpus: 1,
            virtio_mmio: vec![(VIRTIO_MMIO_START.0, 0x1000, 5), (addr, size, 6)],
        };
        let err = setup_acpi(&mem, &cfg).unwrap_err();
        assert!(
            matches!(err, Error::VirtioWindowAbove4G { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{addr:#x}")), "{err}");
    }
    // The last window that fits below 4 GiB is fine.
    let cfg = AcpiConfig {
        cpus: 1,
        virtio_mmio: vec![(0xffff_f000, 0x1000, 5)],
    };
    setup_acpi(&mem, &cfg).unwrap();

    let err = setup_acpi(&mem, &config(1, MAX_VIRTIO_DEVICES as u32 + 1)).unwrap_err();
    assert!(
        matches!(err, Error::TooManyVirtioDevices { count } if count == MAX_VIRTIO_DEVICES + 1),
        "{err}"
    );
    let err = setup_acpi(&mem, &config(1, MAX_VIRTIO_DEVICES as u32)).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { size } if size > ACPI_SIZE),
        "{err}"
    );
    assert!(err.to_string().contains("0xe0000"), "{err}");

    // Guest memory that ends below the ACPI area.
    let small = guest_mem(0x9_0000);
    assert!(matches!(
        setup_acpi(&small, &config(1, 0)),
        Err(Error::Write(_))
    ));
}

#[test]
fn a_failed_setup_writes_nothing() {
    let mem = mem();
    assert!(setup_acpi(&mem, &config(1, MAX_VIRTIO_DEVICES as u32)).is_err());
    let mut area = vec![0xffu8; ACPI_SIZE as usize];
    mem.read_slice(&mut area, ACPI_START).unwrap();
    assert!(area.iter().all(|&b| b == 0), "the ACPI area was written");
}
