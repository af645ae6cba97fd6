//! Boot parameters: the kernel command line, and either the Linux zero page (64-bit boot
//! protocol) or the PVH `hvm_start_info` (PVH boot), each carrying the memory map and the
//! initrd location.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::load_cmdline;

use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::loader::{
    EntryPoint, InitrdRange, LoadedKernel, KERNEL_BOOT_FLAG_MAGIC, KERNEL_HDR_MAGIC,
};
use crate::memory::{e820_map, E820Entry};
use crate::{GuestAddress, GuestMemoryMmap};

/// `type_of_loader`: 0xff, "undefined" boot loader (Documentation/x86/boot.rst, "type_of_loader").
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` when the kernel gives none: 16 MiB, the x86_64 default
/// `CONFIG_PHYSICAL_ALIGN` maximum (Documentation/x86/boot.rst, "kernel_alignment").
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Longest command line (without the NUL) a bzImage older than boot protocol 2.06 accepts.
const LEGACY_CMDLINE_MAX: u64 = 255;
/// `hvm_start_info.version`: 1 adds the memory map fields (xen start_info.h).
const HVM_START_INFO_VERSION: u32 = 1;

/// Errors from writing the boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line could not be turned into a C string.
    #[error("the kernel command line is not valid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line is longer than the kernel or the VMM allows.
    #[error("the kernel command line is {len} bytes long but at most {max} bytes are allowed")]
    CmdlineTooLong {
        /// Length without the terminating NUL.
        len: u64,
        /// Longest accepted length without the terminating NUL.
        max: u64,
    },
    /// Writing the command line to guest memory failed.
    #[error("cannot write the kernel command line to guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// The initrd lies where the 32-bit zero page fields cannot point.
    #[error("the initrd at {addr:#x} ({size} bytes) is not below 4 GiB")]
    InitrdAbove4G {
        /// Initrd address.
        addr: u64,
        /// Initrd size.
        size: usize,
    },
    /// The memory map does not fit in the zero page or the PVH memmap area.
    #[error("the guest memory map has {entries} entries but only {max} fit")]
    TooManyMemoryMapEntries {
        /// Entries in the map.
        entries: usize,
        /// Room for entries.
        max: usize,
    },
    /// Writing the zero page failed.
    #[error("cannot write the Linux zero page (boot_params) to guest memory")]
    WriteZeroPage(#[source] linux_loader::configurator::Error),
    /// Writing the PVH start info failed.
    #[error("cannot write the PVH start info to guest memory")]
    WritePvhInfo(#[source] linux_loader::configurator::Error),
}

/// Writes the command line at [`CMDLINE_START`] and the boot parameters the kernel's entry point
/// expects: the zero page at [`ZERO_PAGE_START`] for [`EntryPoint::Long64`], or
/// `hvm_start_info` at [`PVH_INFO_START`] for [`EntryPoint::Pvh`].
///
/// `mem_size` is the guest memory size, from which the memory map is built
/// ([`crate::memory::e820_map`]).
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<&InitrdRange>,
    mem_size: u64,
    acpi_rsdp: Option<GuestAddress>,
) -> Result<(), Error> {
    let cmdline_len = write_cmdline(mem, kernel, cmdline)?;
    let map = e820_map(mem_size);
    match kernel.entry {
        EntryPoint::Long64(_) => {
            let mut params = zero_page(kernel, cmdline_len, initrd, &map)?;
            // boot_params.acpi_rsdp_addr (protocol 2.14): the kernel need not scan for it.
            params.acpi_rsdp_addr = acpi_rsdp.map_or(0, |a| a.0);
            LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, ZERO_PAGE_START), mem)
                .map_err(Error::WriteZeroPage)
        }
        EntryPoint::Pvh(_) => write_pvh_info(mem, initrd, &map, acpi_rsdp),
    }
}

/// Checks the command line's length and writes it; returns its length without the NUL.
fn write_cmdline(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
) -> Result<u64, Error> {
    let cstring = cmdline.as_cstring().map_err(Error::Cmdline)?;
    let len = cstring.as_bytes().len() as u64;
    // cmdline_size: "maximum size of the command line without the terminating zero"
    // (Documentation/x86/boot.rst, protocol 2.06+; 255 before).
    let kernel_max = kernel.setup_header.map(|hdr| {
        if hdr.version >= 0x0206 {
            u64::from(hdr.cmdline_size)
        } else {
            LEGACY_CMDLINE_MAX
        }
    });
    let max = kernel_max
        .unwrap_or(u64::MAX)
        .min(CMDLINE_MAX_SIZE as u64 - 1);
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    load_cmdline(mem, CMDLINE_START, cmdline).map_err(Error::WriteCmdline)?;
    Ok(len)
}

/// Builds the zero page (Documentation/x86/zero-page.rst and boot.rst, "64-bit Boot Protocol"):
/// the kernel's own setup header for a bzImage (a blank one for an ELF kernel), with the fields
/// a boot loader must fill, and the e820 table.
fn zero_page(
    kernel: &LoadedKernel,
    cmdline_len: u64,
    initrd: Option<&InitrdRange>,
    map: &[E820Entry],
) -> Result<boot_params, Error> {
    let mut params = boot_params::default();
    let mut hdr: setup_header = kernel.setup_header.unwrap_or_default();
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    hdr.cmd_line_ptr = CMDLINE_START.0 as u32;
    // The kernel reads the command line up to its NUL; like Firecracker and Cloud Hypervisor we
    // record the actual length (without the NUL) here.
    hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        let too_high = || Error::InitrdAbove4G {
            addr: initrd.addr.0,
            size: initrd.size,
        };
        let end = initrd
            .addr
            .0
            .checked_add(initrd.size as u64)
            .ok_or_else(too_high)?;
        if end > u64::from(u32::MAX) + 1 {
            return Err(too_high());
        }
        hdr.ramdisk_image = initrd.addr.0 as u32;
        hdr.ramdisk_size = initrd.size as u32;
    }
    params.hdr = hdr;

    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyMemoryMapEntries {
            entries: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.as_u32(),
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes `hvm_start_info` at [`PVH_INFO_START`], the memory map at [`PVH_MEMMAP_START`] and,
/// with an initrd, a one-entry module list at [`PVH_MODLIST_START`]
/// (xen/include/public/arch-x86/hvm/start_info.h; xen docs/misc/pvh.pandoc).
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<&InitrdRange>,
    map: &[E820Entry],
    acpi_rsdp: Option<GuestAddress>,
) -> Result<(), Error> {
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyMemoryMapEntries {
            entries: map.len(),
            max: PVH_MEMMAP_MAX_ENTRIES,
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.as_u32(),
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START.0,
        memmap_paddr: PVH_MEMMAP_START.0,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: acpi_rsdp.map_or(0, |a| a.0),
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|initrd| hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size as u64,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START.0;
    }

    let mut params = BootParams::new(&start_info, PVH_INFO_START);
    params.set_sections(&memmap, PVH_MEMMAP_START);
    if !modules.is_empty() {
        params.set_modules(&modules, PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::WritePvhInfo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HIMEM_START;
    use crate::loader::tests::{fake_bzimage, fake_elf};
    use crate::loader::{load_initrd, load_kernel, KernelFormat};
    use crate::test_util::{guest_mem, TempFile};
    use crate::GuestAddress;
    use vm_memory::{Address, Bytes, GuestMemoryBackend};

    const MIB: u64 = 1 << 20;

    fn cmdline(s: &str) -> Cmdline {
        let mut c = Cmdline::new(s.len() + 1).unwrap();
        c.insert_str(s).unwrap();
        c
    }

    fn read_cstr(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, addr).unwrap();
        buf
    }

    #[test]
    fn zero_page_for_bzimage() {
        let mem = guest_mem(64 * MIB as usize);
        let mut k = TempFile::new(&fake_bzimage(0x2000, 0x4000, 0x37ff_ffff));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        let mut i = TempFile::new(&[0x5a; 3000]);
        let initrd = load_initrd(&mem, i.file(), &kernel).unwrap();
        let text = "console=ttyS0 reboot=k panic=1";
        configure_boot(&mem, &kernel, &cmdline(text), Some(&initrd), 64 * MIB, None).unwrap();

        let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(hdr.type_of_loader, 0xff);
        // The kernel's own fields survive.
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, text.len() as u32);
        assert_eq!({ hdr.ramdisk_image } as u64, initrd.addr.0);
        assert_eq!({ hdr.ramdisk_size }, 3000);
        assert_eq!(params.e820_entries, 3);
        let e = params.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, 0x9fc00, 1)
        );
        assert_eq!(
            ({ e[1].addr }, { e[1].size }, { e[1].r#type }),
            (0x9fc00, 0x100000 - 0x9fc00, 2)
        );
        assert_eq!(
            ({ e[2].addr }, { e[2].size }, { e[2].r#type }),
            (0x100000, 63 * MIB, 1)
        );
        assert_eq!({ e[3].size }, 0);

        let mut expected = text.as_bytes().to_vec();
        expected.push(0);
        assert_eq!(read_cstr(&mem, CMDLINE_START, expected.len()), expected);
    }

    #[test]
    fn zero_page_for_elf_long64() {
        let mem = guest_mem(16 * MIB as usize);
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, None));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
        // The memory map follows mem_size (here one that straddles the MMIO gap).
        configure_boot(&mem, &kernel, &cmdline("quiet"), None, 5 << 30, None).unwrap();
        let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT_BYTES);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ hdr.ramdisk_size }, 0);
        assert_eq!(params.e820_entries, 4);
        let e = params.e820_table;
        assert_eq!(({ e[3].addr }, { e[3].size }), (4 << 30, 2 << 30));
    }

    #[test]
    fn the_acpi_rsdp_address_reaches_both_boot_protocols() {
        let rsdp = GuestAddress(0xe_0000);
        let mem = guest_mem(32 * MIB as usize);
        let mut k = TempFile::new(&fake_bzimage(0x2000, 0x4000, 0));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        configure_boot(&mem, &kernel, &cmdline("x"), None, 32 * MIB, Some(rsdp)).unwrap();
        let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ params.acpi_rsdp_addr }, rsdp.0);
        configure_boot(&mem, &kernel, &cmdline("x"), None, 32 * MIB, None).unwrap();
        let params: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!(
            { params.acpi_rsdp_addr },
            0,
            "no ACPI: the kernel is not told of any"
        );

        let mem = guest_mem(32 * MIB as usize);
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, Some(0x20_0000)));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        configure_boot(&mem, &kernel, &cmdline("x"), None, 32 * MIB, Some(rsdp)).unwrap();
        let info: hvm_start_info = mem.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(info.rsdp_paddr, rsdp.0);
    }

    #[test]
    fn pvh_start_info() {
        let mem = guest_mem(32 * MIB as usize);
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, Some(0x20_0000)));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        assert!(matches!(kernel.entry, EntryPoint::Pvh(_)));
        let mut i = TempFile::new(&[1; 0x1234]);
        let initrd = load_initrd(&mem, i.file(), &kernel).unwrap();
        configure_boot(
            &mem,
            &kernel,
            &cmdline("console=hvc0"),
            Some(&initrd),
            32 * MIB,
            None,
        )
        .unwrap();

        let info: hvm_start_info = mem.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START.0);
        assert_eq!(read_cstr(&mem, CMDLINE_START, 13), b"console=hvc0\0");
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START.0);
        assert_eq!(info.memmap_entries, 3);
        let entries: Vec<hvm_memmap_table_entry> = (0..3)
            .map(|n| {
                mem.read_obj(PVH_MEMMAP_START.unchecked_add(n * 24))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            (entries[0].addr, entries[0].size, entries[0].type_),
            (0, 0x9fc00, 1)
        );
        assert_eq!(entries[1].type_, 2);
        assert_eq!(
            (entries[2].addr, entries[2].size, entries[2].type_),
            (HIMEM_START.0, 31 * MIB, 1)
        );
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START.0);
        let module: hvm_modlist_entry = mem.read_obj(PVH_MODLIST_START).unwrap();
        assert_eq!(module.paddr, initrd.addr.0);
        assert_eq!(module.size, 0x1234);
        assert_eq!(module.cmdline_paddr, 0);
        // No zero page is written for PVH.
        let zero: [u8; 16] = mem.read_obj(ZERO_PAGE_START.unchecked_add(0x1f1)).unwrap();
        assert_eq!(zero, [0; 16]);
    }

    #[test]
    fn pvh_without_initrd() {
        let mem = guest_mem(32 * MIB as usize);
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, Some(0x20_0000)));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        configure_boot(&mem, &kernel, &cmdline("x"), None, 32 * MIB, None).unwrap();
        let info: hvm_start_info = mem.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
    }

    #[test]
    fn cmdline_limits() {
        let mem = guest_mem(16 * MIB as usize);
        // The fake bzImage header says cmdline_size = 2047.
        let mut k = TempFile::new(&fake_bzimage(0x1000, 0, 0));
        let bz = load_kernel(&mem, k.file()).unwrap();
        let long = "a".repeat(3000);
        assert!(matches!(
            configure_boot(&mem, &bz, &cmdline(&long), None, 16 * MIB, None),
            Err(Error::CmdlineTooLong {
                len: 3000,
                max: 2047
            })
        ));
        let ok = "a".repeat(2047);
        configure_boot(&mem, &bz, &cmdline(&ok), None, 16 * MIB, None).unwrap();

        // An ELF kernel is limited by the VMM's command line area.
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, None));
        let elf = load_kernel(&mem, k.file()).unwrap();
        let huge = "b".repeat(CMDLINE_MAX_SIZE);
        let err = configure_boot(&mem, &elf, &cmdline(&huge), None, 16 * MIB, None).unwrap_err();
        assert!(
            matches!(err, Error::CmdlineTooLong { max: 0xffff, .. }),
            "{err}"
        );
    }

    #[test]
    fn initrd_above_4g_rejected() {
        let mem = guest_mem(16 * MIB as usize);
        let mut k = TempFile::new(&fake_elf(&[0xf4; 16], 0x20_0000, 16, None));
        let kernel = load_kernel(&mem, k.file()).unwrap();
        let initrd = InitrdRange {
            addr: GuestAddress(0xffff_f000),
            size: 0x2000,
        };
        assert!(matches!(
            configure_boot(&mem, &kernel, &cmdline("x"), Some(&initrd), 16 * MIB, None),
            Err(Error::InitrdAbove4G { .. })
        ));
        assert!(mem.last_addr() < GuestAddress(0xffff_f000));
    }
}
