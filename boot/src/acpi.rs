//! The ACPI tables by which the guest finds its CPUs, interrupt controllers and devices, and how
//! it powers off: a hardware-reduced ACPI platform (ACPI 6.5 §4.1), as Firecracker and Cloud
//! Hypervisor describe theirs.
//!
//! At [`ACPI_START`] we write, in order:
//!
//! - the RSDP (ACPI 6.5 §5.2.5), revision 2, pointing at the XSDT;
//! - the XSDT (§5.2.8), listing the FADT and the MADT;
//! - the FADT (§5.2.9), revision 6.5: hardware-reduced, with the sleep control and status
//!   registers at [`ACPI_SLEEP_CONTROL_PORT`] / [`ACPI_SLEEP_STATUS_PORT`] and `X_DSDT` pointing
//!   at the DSDT;
//! - the MADT (§5.2.12): the local APIC address, one Processor Local APIC per vCPU, and the
//!   IOAPIC, with the same IDs and routing as the MP table ([`crate::mptable`]) gives;
//! - the DSDT (§5.2.11.1), in AML: COM1, one device per virtio-mmio window, pvpanic, and `_S5_`.
//!
//! The tables are built with rust-vmm's `acpi_tables`; the unit tests decode the DSDT back with
//! ACPICA's `iasl`.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestMemoryError};

use crate::layout::{
    ACPI_SIZE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START, APIC_START, COM1_PORT,
    FIRST_ADDR_PAST_32BITS, IOAPIC_START, PVPANIC_PORT, SERIAL_IRQ,
};
use crate::mptable::MAX_SUPPORTED_CPUS;
use crate::{GuestAddress, GuestMemoryMmap};

/// OEM ID of every table and of the RSDP, 6 bytes space padded (§5.2.6, Table 5.4).
const OEM_ID: [u8; 6] = *b"VMM   ";
/// OEM revision of every table.
const OEM_REVISION: u32 = 1;
/// OEM table IDs, 8 bytes space padded (§5.2.6, Table 5.4).
const XSDT_TABLE_ID: [u8; 8] = *b"VMMXSDT ";
const FADT_TABLE_ID: [u8; 8] = *b"VMMFACP ";
const MADT_TABLE_ID: [u8; 8] = *b"VMMAPIC ";
const DSDT_TABLE_ID: [u8; 8] = *b"VMMDSDT ";
/// FADT "Hypervisor Vendor Identity" (§5.2.9, Table 5.9), as Firecracker's "FIRECKVM".
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"VMM-KVM ";

/// Signatures (§5.2.5.3, §5.2.6 Table 5.5).
const MADT_SIGNATURE: [u8; 4] = *b"APIC";
const DSDT_SIGNATURE: [u8; 4] = *b"DSDT";
/// Length of the common table header (§5.2.6, Table 5.4).
const SDT_HEADER_LEN: u32 = 36;
/// MADT revision 5 (ACPI 6.3 onwards; §5.2.12, Table 5.43).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: AML integers are 64 bits wide (§5.2.11.1, Table 5.17).
const DSDT_REVISION: u8 = 2;
/// MADT byte offsets of the local interrupt controller address and the flags (Table 5.43).
const MADT_LAPIC_ADDRESS_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
/// Length of the MADT's fixed part: the header, the local APIC address and the flags.
const MADT_FIXED_LEN: u32 = 44;
/// MADT flag `PCAT_COMPAT` (Table 5.44): the machine also has dual 8259 PICs, as KVM's in-kernel
/// irqchip does (the MP table's virtual wire, LINT0 = ExtINT, describes the same PIC).
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// The ID of the IOAPIC, as the MP table gives it: the one after the last CPU's APIC ID.
const fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// FADT `IAPC_BOOT_ARCH` flags (§5.2.9.3, Table 5.11): no VGA (bit 2), no MSI (bit 3, there is no
/// PCI), no PCIe ASPM controls (bit 4), no CMOS RTC (bit 5: the VMM emulates none at 0x70). Bit 1,
/// "8042 present", is left clear as Firecracker does: the VMM's i8042 is only the reset line that
/// `reboot=k` pulses, which Linux does without the i8042 driver, so the driver need not probe it.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED
    | IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS
    | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
/// Width of the one-byte sleep control and status registers, in bits (Generic Address
/// Structure, §5.2.3.2).
const SLEEP_REGISTER_BITS: u8 = 8;

/// The `SLP_TYP` value of S5 (soft off) in the DSDT's `_S5_` package: what the guest writes to
/// bits 4:2 of the sleep control register, with `SLP_EN` (bit 5) set, to power off (§4.8.3.7,
/// §7.4.2). The sleep register device must expect the same value.
pub const S5_SLP_TYP: u8 = 5;

/// Number of I/O ports of COM1: the 16550's eight registers (the device model's
/// `SERIAL_PORT_LEN`).
const COM1_PORT_LEN: u8 = 8;
/// Number of I/O ports of pvpanic: one.
const PVPANIC_PORT_LEN: u8 = 1;
/// Plug and Play ID of a 16550A-compatible serial port (the PNP ID list Microsoft publishes).
const COM1_HID: &str = "PNP0501";
/// ACPI ID of a virtio-mmio device, which Linux's virtio_mmio driver matches.
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// ACPI ID of QEMU's pvpanic device, which Linux's pvpanic driver matches.
const PVPANIC_HID: &str = "QEMU0001";
/// `_STA` of the pvpanic device: present, enabled, shown in the UI, functioning (§6.3.7).
const STA_PRESENT_ENABLED_FUNCTIONING: u8 = 0x0f;
/// Most virtio-mmio devices the DSDT can name: each is `V` and three hex digits.
pub const MAX_VIRTIO_DEVICES: usize = 0x1000;

/// The XSDT lists the FADT and the MADT, each a 64-bit address (§5.2.8, Table 5.8).
const XSDT_ENTRIES: u64 = 2;
const XSDT_ENTRY_LEN: u64 = 8;
/// Alignment of each table after the RSDP, in bytes.
const TABLE_ALIGN: u64 = 16;

/// What the ACPI tables describe besides the fixed devices of [`crate::layout`] (COM1, pvpanic,
/// the sleep registers, the interrupt controllers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs: APIC IDs (and ACPI processor UIDs) `0..cpus`.
    pub cpus: u8,
    /// The virtio-mmio devices, in order: `(address, size, gsi)` of each device's register
    /// window and its interrupt (an IOAPIC input, edge-triggered, active high). The window must
    /// lie below 4 GiB.
    pub virtio_mmio: Vec<(u64, u64, u32)>,
}

/// Errors from building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Zero vCPUs.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// More vCPUs than APIC IDs.
    #[error(
        "{cpus} vCPUs requested but the MADT describes at most {MAX_SUPPORTED_CPUS} (8-bit APIC \
         IDs, and the IOAPIC takes the ID after the last CPU's)"
    )]
    TooManyCpus {
        /// Requested vCPU count.
        cpus: u8,
    },
    /// More virtio-mmio devices than the DSDT has names for.
    #[error(
        "{count} virtio-mmio devices requested but the DSDT names at most {MAX_VIRTIO_DEVICES}"
    )]
    TooManyVirtioDevices {
        /// Requested device count.
        count: usize,
    },
    /// A virtio-mmio window that a 32-bit memory descriptor cannot describe.
    #[error(
        "virtio-mmio device {index}'s window [{addr:#x}, +{size:#x}) is not within the first \
         4 GiB, which is all the DSDT's Memory32Fixed descriptor can describe"
    )]
    VirtioWindowAbove4G {
        /// Index of the device in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// Window address.
        addr: u64,
        /// Window size.
        size: u64,
    },
    /// The tables do not fit in the room the layout gives them.
    #[error(
        "the ACPI tables take {size} bytes, more than the {ACPI_SIZE} reserved for them at {:#x}",
        ACPI_START.0
    )]
    TooLarge {
        /// Bytes the tables need.
        size: u64,
    },
    /// Guest memory does not hold the tables.
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// The bytes of an `acpi_tables` object.
fn aml_bytes(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}

/// `offset` rounded up to [`TABLE_ALIGN`].
fn align(offset: u64) -> u64 {
    offset.next_multiple_of(TABLE_ALIGN)
}

/// The DSDT's AML: `\_SB_` with COM1, the virtio-mmio devices and pvpanic, then `\_S5_`.
fn dsdt_aml(config: &AcpiConfig) -> Result<Vec<u8>, Error> {
    let mut sb = Vec::new();

    let com1_hid = aml::EISAName::new(COM1_HID);
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, COM1_PORT_LEN);
    // ISA IRQs are edge-triggered and active high, as the MP table's "conform to the bus" says.
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut sb);

    for (index, &(addr, size, gsi)) in config.virtio_mmio.iter().enumerate() {
        let above_4g = || Error::VirtioWindowAbove4G { index, addr, size };
        let end = addr.checked_add(size).ok_or_else(above_4g)?;
        let (Ok(addr32), Ok(size32), true) = (
            u32::try_from(addr),
            u32::try_from(size),
            end <= FIRST_ADDR_PAST_32BITS.0,
        ) else {
            return Err(above_4g());
        };
        let uid = index as u64;
        let name = format!("V{index:03X}");
        let window = aml::Memory32Fixed::new(true, addr32, size32);
        // Edge-triggered, active high, exclusive, as Firecracker describes its virtio-mmio
        // devices: KVM's irqfd pulses the IOAPIC input.
        let irq = aml::Interrupt::new(true, true, false, false, gsi);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        aml::Device::new(
            aml::Path::new(&name),
            vec![
                &aml::Name::new("_HID".into(), &VIRTIO_MMIO_HID),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut sb);
    }

    let pvpanic_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, PVPANIC_PORT_LEN);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &PVPANIC_HID),
            &aml::Name::new("_CRS".into(), &pvpanic_crs),
            &aml::Method::new(
                "_STA".into(),
                0,
                false,
                vec![&aml::Return::new(&STA_PRESENT_ENABLED_FUNCTIONING)],
            ),
        ],
    )
    .to_aml_bytes(&mut sb);

    let mut aml_bytes = aml::Scope::raw("\\_SB_".into(), sb);
    // Name (_S5_, Package () { SLP_TYPa, SLP_TYPb }); hardware-reduced ACPI uses SLP_TYPa only.
    aml::Name::new(
        "\\_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &aml::ZERO]),
    )
    .to_aml_bytes(&mut aml_bytes);
    Ok(aml_bytes)
}

/// The MADT: the local APIC address and `PCAT_COMPAT`, one enabled Processor Local APIC per vCPU
/// (UID = APIC ID = index, as the MP table's processor entries), and the IOAPIC with GSI base 0.
///
/// No Interrupt Source Override: the MP table routes ISA IRQ n to IOAPIC pin n for every n (the
/// identity mapping of KVM's default GSI routing, the PIT's IRQ 0 on pin 0 included), which is
/// what the MADT says without overrides (§5.2.12.5).
fn madt(cpus: u8) -> Sdt {
    let mut madt = Sdt::new(
        MADT_SIGNATURE,
        MADT_FIXED_LEN,
        MADT_REVISION,
        OEM_ID,
        MADT_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDRESS_OFFSET, APIC_START.0 as u32);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for cpu in 0..cpus {
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(
        ioapic_id(cpus),
        IOAPIC_START.0 as u32,
        0,
    )));
    madt
}

/// The FADT: hardware-reduced ACPI with no fixed-feature power or sleep button (the flags
/// Firecracker sets), the one-byte sleep control and status registers in port I/O space, the
/// 64-bit DSDT pointer and the hypervisor's identity.
fn fadt(dsdt: GuestAddress) -> Vec<u8> {
    let sleep_register = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            SLEEP_REGISTER_BITS,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, FADT_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt.0);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.sleep_control_reg = sleep_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = sleep_register(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    aml_bytes(&fadt.finalize())
}

/// Writes the ACPI tables at [`ACPI_START`] (see the module documentation) and returns the
/// RSDP's address, for `boot_params.acpi_rsdp_addr` or PVH `rsdp_paddr` (Linux also finds it by
/// its scan of `[0xe0000, 1 MiB)`).
pub fn setup_acpi(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<GuestAddress, Error> {
    if config.cpus == 0 {
        return Err(Error::NoCpus);
    }
    if config.cpus > MAX_SUPPORTED_CPUS {
        return Err(Error::TooManyCpus { cpus: config.cpus });
    }
    if config.virtio_mmio.len() > MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyVirtioDevices {
            count: config.virtio_mmio.len(),
        });
    }

    // The DSDT and the MADT do not depend on where they go; the FADT, XSDT and RSDP point at the
    // tables after them, so the image is laid out first and then filled in.
    let mut dsdt = Sdt::new(
        DSDT_SIGNATURE,
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        DSDT_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&dsdt_aml(config)?);
    let madt = madt(config.cpus);
    let fadt_len = FADT::len() as u64;
    let xsdt_len = u64::from(SDT_HEADER_LEN) + XSDT_ENTRIES * XSDT_ENTRY_LEN;

    let xsdt_at = align(Rsdp::len() as u64);
    let fadt_at = align(xsdt_at + xsdt_len);
    let madt_at = align(fadt_at + fadt_len);
    let dsdt_at = align(madt_at + madt.len() as u64);
    let size = dsdt_at + dsdt.len() as u64;
    if size > ACPI_SIZE {
        return Err(Error::TooLarge { size });
    }
    let addr = |offset: u64| GuestAddress(ACPI_START.0 + offset);

    let mut xsdt = XSDT::new(OEM_ID, XSDT_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(addr(fadt_at).0);
    xsdt.add_entry(addr(madt_at).0);

    let mut image = vec![0u8; size as usize];
    for (offset, bytes) in [
        (0, aml_bytes(&Rsdp::new(OEM_ID, addr(xsdt_at).0))),
        (xsdt_at, aml_bytes(&xsdt)),
        (fadt_at, fadt(addr(dsdt_at))),
        (madt_at, madt.as_slice().to_vec()),
        (dsdt_at, dsdt.as_slice().to_vec()),
    ] {
        let start = offset as usize;
        image[start..start + bytes.len()].copy_from_slice(&bytes);
    }
    mem.write_slice(&image, ACPI_START).map_err(Error::Write)?;
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests;
