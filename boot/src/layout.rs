//! Every guest-physical address and size the VMM uses, and every I/O port it maps, in one
//! place.
//!
//! Low memory (below 1 MiB) holds the boot structures; the kernel is loaded at 1 MiB; the
//! 32-bit MMIO gap `[3 GiB, 4 GiB)` holds the interrupt controllers and virtio-mmio devices, and
//! RAM that does not fit below the gap continues at 4 GiB.
//!
//! ```text
//! 0x0000_0500  boot GDT                      0x0000_0528  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info, memmap, modlist
//! 0x0000_7000  Linux zero page (boot_params) 0x0000_8ff0  boot stack pointer
//! 0x0000_9000  PML4   0x0000_a000  PDPT      0x0000_b000..0x0000_f000  4 page directories
//! 0x0002_0000  kernel command line (64 KiB)
//! 0x0009_fc00  EBDA: MP floating pointer + MP configuration table
//! 0x000a_0000  end of conventional memory (legacy VGA/BIOS hole up to 1 MiB)
//! 0x000e_0000  ACPI tables: RSDP, XSDT, FADT, MADT, DSDT (64 KiB)
//! 0x0010_0000  kernel
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio at 0xd000_0000, IOAPIC, local APIC
//! 0x1_0000_0000 RAM above 4 GiB
//! ```

use vm_memory::GuestAddress;

/// Boot GDT (see [`crate::gdt::BOOT_GDT`]): five 8-byte descriptors, `[0x500, 0x528)`.
/// 0x500 is the first byte after the BIOS data area, which this VMM does not fill.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);

/// Boot IDT: a single zero descriptor, loaded only so that IDTR is valid; the kernel installs its
/// own IDT before enabling interrupts. Placed right after the five-entry GDT.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x528);

/// PVH `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h); its address is passed
/// to the guest in `%ebx`. The memory map table and the module list follow in the same page.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);

/// PVH memory map table (`hvm_memmap_table_entry` array), after the 56-byte `hvm_start_info`.
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6040);

/// Room for [`PVH_MEMMAP_MAX_ENTRIES`] 24-byte memory map entries, up to [`PVH_MODLIST_START`].
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 32;

/// PVH module list (`hvm_modlist_entry` array); the initrd, when present, is module 0.
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6400);

/// Linux zero page (`struct boot_params`, 4 KiB, Documentation/x86/zero-page.rst); its address
/// is passed to the 64-bit entry point in `%rsi`.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);

/// Initial stack pointer for the boot vCPU (`%rsp`/`%rbp`): grows down from just below the
/// page tables, above the zero page.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);

/// Page-map level 4 table of the boot identity mapping; the value for `%cr3`.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);

/// The single page-directory-pointer table, covering the first 512 GiB.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);

/// First of [`PDE_COUNT`] page directories of 2 MiB pages, `[0xb000, 0xf000)`: together they
/// identity-map the first 4 GiB.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);

/// Number of page directories at [`PDE_START`] (each maps 1 GiB).
pub const PDE_COUNT: u64 = 4;

/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);

/// Room for the command line at [`CMDLINE_START`], in bytes including the terminating NUL
/// (a `usize`, as `Cmdline::new` takes its capacity).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;

/// Extended BIOS data area. The MP floating pointer and configuration table live here: Linux
/// scans the last KiB of base memory (639 KiB = 0x9fc00) for the `_MP_` signature
/// (Intel MP spec 1.4 §4; arch/x86/kernel/mpparse.c `find_smp_config`).
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);

/// End of conventional ("low") memory: the legacy VGA and BIOS area `[0xa0000, 1 MiB)` follows.
pub const LOW_RAM_END: GuestAddress = GuestAddress(0xa0000);

/// ACPI tables (see [`crate::acpi::setup_acpi`]): the RSDP first, then the XSDT, FADT, MADT
/// and DSDT. Linux finds the RSDP in `boot_params.acpi_rsdp_addr` or PVH `rsdp_paddr`, and
/// otherwise by scanning `[0xe0000, 0x100000)` on 16-byte boundaries (ACPI 6.5 §5.2.5.1;
/// drivers/acpi/acpica/tbxfroot.c `acpi_find_root_pointer`). The range lies in the hole that the
/// e820 map reserves, `[EBDA_START, 1 MiB)`, clear of the MP table and below 0xff000, where
/// binutils' default `-z separate-code` puts an ELF kernel's header segment.
pub const ACPI_START: GuestAddress = GuestAddress(0xe_0000);

/// Room for the ACPI tables at [`ACPI_START`], in bytes: 64 KiB, up to 0xf0000.
pub const ACPI_SIZE: u64 = 0x1_0000;

/// Start of the window Linux scans for the RSDP (ACPICA `ACPI_HI_RSDP_WINDOW_BASE`; it ends at
/// 1 MiB).
const RSDP_SCAN_WINDOW_START: GuestAddress = GuestAddress(0xe_0000);

/// Where binutils' default `-z separate-code` puts the segment of just an ELF kernel's headers,
/// which the loader accepts: the ACPI tables stay below it.
const LD_DEFAULT_HEADER_SEGMENT: GuestAddress = GuestAddress(0xf_f000);

/// Start of high memory and the kernel load address (bzImage protected-mode code and the
/// physical address a default `vmlinux` is linked at).
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit MMIO gap: no RAM between here and [`MMIO_GAP_END`].
pub const MMIO_GAP_START: GuestAddress = GuestAddress(0xc000_0000);

/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: GuestAddress = GuestAddress(0x1_0000_0000);

/// Size of the 32-bit MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END.0 - MMIO_GAP_START.0;

/// First virtio-mmio device; each further device follows [`VIRTIO_MMIO_SIZE_EACH`] higher.
pub const VIRTIO_MMIO_START: GuestAddress = GuestAddress(0xd000_0000);

/// Size of one virtio-mmio device window (virtio 1.2 §4.2.2: registers, config space at 0x100).
pub const VIRTIO_MMIO_SIZE_EACH: u64 = 0x1000;

/// IOAPIC MMIO base (Linux arch/x86/include/asm/apicdef.h `IO_APIC_DEFAULT_PHYS_BASE`).
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);

/// Local APIC MMIO base (Linux arch/x86/include/asm/apicdef.h `APIC_DEFAULT_PHYS_BASE`).
pub const APIC_START: GuestAddress = GuestAddress(0xfee0_0000);

/// Where KVM puts the three pages of the real-mode TSS that VMX needs (`KVM_SET_TSS_ADDR`):
/// just below the IOAPIC/LAPIC area, inside the 32-bit MMIO gap, so it never overlaps RAM.
pub const KVM_TSS_START: GuestAddress = GuestAddress(0xfffb_d000);

/// First address above the 32-bit address space: RAM beyond [`MMIO_GAP_START`] continues here.
pub const FIRST_ADDR_PAST_32BITS: GuestAddress = GuestAddress(0x1_0000_0000);

/// Number of IOAPIC input pins (the KVM in-kernel IOAPIC has 24).
pub const IOAPIC_NUM_PINS: u8 = 24;

/// Legacy IRQ of the first serial port (COM1, I/O port [`COM1_PORT`]).
pub const SERIAL_IRQ: u32 = 4;

/// The first GSI of the virtio-mmio devices (one each, in order): past the legacy ISA
/// interrupts (timer 0, keyboard 1, cascade 2, COM2 3, COM1 [`SERIAL_IRQ`]).
pub const FIRST_VIRTIO_IRQ: u32 = 5;

// Port I/O: the PC's fixed ISA port assignments for the devices the VMM emulates. How many
// ports each device decodes from its base is the device model's own fact (`devices` crate).

/// COM1: the first 16550 UART (`devices::serial::SERIAL_PORT_LEN` ports from here).
pub const COM1_PORT: u16 = 0x3f8;

/// The i8042 keyboard controller: its data port; the command/status port is 0x64
/// (`devices::i8042::I8042_PORT_LEN` ports from here).
pub const I8042_PORT: u16 = 0x60;

/// The POST/debug port, where a guest writes a byte to mark a boot milestone.
pub const DEBUG_PORT: u16 = 0x80;

/// The hardware-reduced ACPI sleep control register (ACPI 6.5 §4.8.3.7), one byte in port I/O
/// space that the FADT names: Linux powers off by writing `SLP_TYP` (from the DSDT's `_S5_`) and
/// `SLP_EN` here. 0x600 is where Cloud Hypervisor's ACPI shutdown device lives: it moved there
/// from 0x3c0 (the VGA attribute controller's port) in 2022, cloud-hypervisor PR #4480, to a
/// port that QEMU also uses (q35's ACPI PM block, where OVMF puts it) and so one that TDX guests
/// allow. It is clear of COM1, the i8042, the POST port and pvpanic.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;

/// The hardware-reduced ACPI sleep status register (ACPI 6.5 §4.8.3.8): the same byte as
/// [`ACPI_SLEEP_CONTROL_PORT`], as in Cloud Hypervisor. A read returns 0 (`WAK_STS` clear);
/// Linux clears `WAK_STS` by writing 0x80 there, which has `SLP_EN` clear and so is no sleep
/// request. Linux offers S5 only when both registers are set (`acpi_sleep_state_supported`).
pub const ACPI_SLEEP_STATUS_PORT: u16 = ACPI_SLEEP_CONTROL_PORT;

/// QEMU's pvpanic ISA device, at QEMU's default port (docs/specs/pvpanic.rst; the DSDT
/// describes it as `QEMU0001`, which Linux's pvpanic driver binds to). One byte.
pub const PVPANIC_PORT: u16 = 0x505;

/// The guest exit-code port, vmm's own: a guest writes one byte N here, and the VMM then ends
/// with exit code N once the guest powers off or resets (for CI runs that boot a kernel to run
/// tests). The guest tool `vmm-exit N` (resources/guest-tools/vmm-exit.c, built with this value
/// by resources/lib.sh) does the write. One byte, next to pvpanic.
pub const GUEST_EXIT_CODE_PORT: u16 = 0x506;

/// One range `[start, end)` of guest memory that the VMM fills in at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRange {
    /// What the VMM puts there, in words for an error message.
    pub name: &'static str,
    /// First address.
    pub start: GuestAddress,
    /// First address past the range.
    pub end: GuestAddress,
}

/// Everything the VMM writes into guest memory before the first vCPU runs, apart from the
/// kernel itself and the initrd (which goes above the kernel): a kernel segment must not
/// overlap any of these. Everything else in RAM, below 1 MiB included, is the kernel's to use.
pub const VMM_BOOT_RANGES: [BootRange; 8] = [
    BootRange {
        name: "boot GDT and IDT",
        start: BOOT_GDT_START,
        end: GuestAddress(BOOT_IDT_START.0 + 8),
    },
    BootRange {
        name: "PVH start info, memory map and module list",
        start: PVH_INFO_START,
        end: ZERO_PAGE_START,
    },
    BootRange {
        name: "Linux zero page",
        start: ZERO_PAGE_START,
        end: GuestAddress(ZERO_PAGE_START.0 + 0x1000),
    },
    BootRange {
        name: "boot stack",
        start: GuestAddress(ZERO_PAGE_START.0 + 0x1000),
        end: PML4_START,
    },
    BootRange {
        name: "identity-map page tables",
        start: PML4_START,
        end: GuestAddress(PDE_START.0 + PDE_COUNT * 0x1000),
    },
    BootRange {
        name: "kernel command line",
        start: CMDLINE_START,
        end: GuestAddress(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64),
    },
    BootRange {
        name: "MP table (EBDA)",
        start: EBDA_START,
        end: LOW_RAM_END,
    },
    BootRange {
        name: "ACPI tables",
        start: ACPI_START,
        end: GuestAddress(ACPI_START.0 + ACPI_SIZE),
    },
];

// The layout must not overlap itself.
const _: () = assert!(BOOT_GDT_START.0 + 5 * 8 <= BOOT_IDT_START.0);
const _: () = assert!(BOOT_IDT_START.0 + 8 <= PVH_INFO_START.0);
const _: () = assert!(PVH_INFO_START.0 + 56 <= PVH_MEMMAP_START.0);
const _: () =
    assert!(PVH_MEMMAP_START.0 + PVH_MEMMAP_MAX_ENTRIES as u64 * 24 <= PVH_MODLIST_START.0);
const _: () = assert!(PVH_MODLIST_START.0 + 32 <= ZERO_PAGE_START.0);
const _: () = assert!(ZERO_PAGE_START.0 + 0x1000 <= BOOT_STACK_POINTER.0);
const _: () = assert!(BOOT_STACK_POINTER.0 < PML4_START.0);
const _: () = assert!(PML4_START.0 + 0x1000 <= PDPTE_START.0);
const _: () = assert!(PDPTE_START.0 + 0x1000 <= PDE_START.0);
const _: () = assert!(PDE_START.0 + PDE_COUNT * 0x1000 <= CMDLINE_START.0);
const _: () = assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
const _: () = assert!(EBDA_START.0 < LOW_RAM_END.0 && LOW_RAM_END.0 <= HIMEM_START.0);
const _: () = assert!(LOW_RAM_END.0 <= ACPI_START.0);
const _: () = assert!(ACPI_START.0 + ACPI_SIZE <= LD_DEFAULT_HEADER_SEGMENT.0);
// The RSDP, at ACPI_START, is where Linux's scan of [0xe0000, 1 MiB) in 16-byte steps finds it.
const _: () = assert!(ACPI_START.0 >= RSDP_SCAN_WINDOW_START.0 && ACPI_START.0.is_multiple_of(16));
const _: () = assert!(MMIO_GAP_START.0 <= VIRTIO_MMIO_START.0);
const _: () = assert!(VIRTIO_MMIO_START.0 < IOAPIC_START.0 && IOAPIC_START.0 < APIC_START.0);
const _: () = assert!(APIC_START.0 < MMIO_GAP_END.0);
const _: () = assert!(APIC_START.0 + 0x1000 <= KVM_TSS_START.0);
const _: () = assert!(KVM_TSS_START.0 + 3 * 0x1000 <= MMIO_GAP_END.0);
