//! Loading the kernel (bzImage or ELF `vmlinux`) and the initrd into guest memory.
//!
//! The format is chosen by magic number; the image is parsed by `linux-loader` (`BzImage` and
//! `Elf`), with checks around it that turn "does not fit" and "wrong architecture" into errors
//! a user can act on. [`place_kernel`] and [`place_initrd`] decide where everything goes and
//! leave the copying to the caller ([`copy::Placement`], [`copy::CopyQueue`]: on other threads,
//! while the VM is being created); [`load_kernel`] and [`load_initrd`] also copy.

pub mod copy;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::size_of;

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_X86_64,
    PT_LOAD,
};
use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, ByteValued, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use self::copy::{Placement, PlacingReader};
use crate::layout::{HIMEM_START, VMM_BOOT_RANGES};
// The initrd is page aligned, as the boot protocol asks.
use crate::memory::PAGE_SIZE;
use crate::GuestMemoryMmap;

/// ELF identification: `e_ident[EI_MAG0..=EI_MAG3]` (System V ABI, "ELF Identification").
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Offset of `setup_header` in a bzImage (Documentation/x86/boot.rst, "The Real-Mode Kernel
/// Header").
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of `boot_flag` in a bzImage (Documentation/x86/boot.rst).
pub const BOOT_FLAG_OFFSET: usize = 0x1fe;
/// `boot_flag`: 0xaa55, the legacy boot sector signature (Documentation/x86/boot.rst).
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Offset of `header` in a bzImage (Documentation/x86/boot.rst).
pub const HDR_MAGIC_OFFSET: usize = 0x202;
/// `header`: "HdrS" read as a little-endian u32, present since boot protocol 2.00
/// (Documentation/x86/boot.rst).
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// The 64-bit entry point is `startup_64`, 0x200 bytes into the protected-mode kernel
/// (Documentation/x86/boot.rst, "64-bit Boot Protocol").
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Oldest boot protocol accepted: 2.06 added `cmdline_size` and predates every x86_64 kernel
/// with a 64-bit entry point that this VMM can boot.
pub const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// Highest address an initrd may occupy when the kernel does not say (ELF kernels, or a zero
/// `initrd_addr_max`); Linux's own default (Documentation/x86/boot.rst, `initrd_addr_max`).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Bytes read to recognise a kernel: enough for the ELF header and the bzImage header magic.
const PROBE_LEN: usize = 0x210;

/// A byte count shown the way a user thinks of it ("12.5 MiB").
pub(crate) struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let n = self.0;
        if n >= GIB {
            write!(f, "{:.1} GiB", n as f64 / GIB as f64)
        } else if n >= MIB {
            write!(f, "{:.1} MiB", n as f64 / MIB as f64)
        } else if n >= KIB {
            write!(f, "{:.1} KiB", n as f64 / KIB as f64)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

/// Errors from loading the kernel or the initrd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be read.
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] io::Error),
    /// The file has neither magic number.
    #[error(
        "the kernel image is neither a bzImage (no \"HdrS\" header at offset 0x202) \
         nor an ELF vmlinux (no \\x7fELF magic)"
    )]
    NotAKernel,
    /// An ELF file, but not a 64-bit one.
    #[error("the kernel is a 32-bit ELF file; only 64-bit x86_64 vmlinux images can be booted")]
    ElfNot64Bit,
    /// An ELF file for another architecture.
    #[error("the kernel is an ELF file for machine type {machine}, not x86_64 (62)")]
    ElfNotX86_64 {
        /// `e_machine` from the ELF header.
        machine: u16,
    },
    /// An ELF file that cannot be booted, for the reason given.
    #[error("the ELF kernel cannot be booted: {0}")]
    BadElf(String),
    /// A bzImage that cannot be booted, for the reason given.
    #[error("the bzImage cannot be booted: {0}")]
    BadBzImage(String),
    /// Guest memory has no RAM at the kernel load address.
    #[error("guest memory has no RAM at 1 MiB, where the kernel is loaded")]
    NoRamAtLoadAddress,
    /// The kernel does not fit in the RAM above its load address.
    #[error(
        "the kernel needs {} of guest memory above 1 MiB but only {} is there; \
         give the guest more memory (--memory)",
        HumanSize(*.size), HumanSize(*.room)
    )]
    KernelTooLarge {
        /// Bytes the kernel occupies from its load address (including decompression room).
        size: u64,
        /// Bytes of RAM from the load address to the end of the first RAM region.
        room: u64,
    },
    /// `linux-loader` failed to copy the kernel.
    #[error("cannot load the {format} into guest memory")]
    LoadKernel {
        /// The format that was being loaded.
        format: KernelFormat,
        /// What `linux-loader` reported.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd file could not be read.
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] io::Error),
    /// The initrd file is empty.
    #[error("the initrd file is empty")]
    EmptyInitrd,
    /// The initrd does not fit between the kernel and the highest address it may occupy.
    #[error(
        "the initrd is {} but only {} of guest memory is free for it between the kernel and \
         the initrd address limit; give the guest more memory (--memory)",
        HumanSize(*.size), HumanSize(*.room)
    )]
    InitrdTooLarge {
        /// Initrd size in bytes.
        size: u64,
        /// Largest initrd that would have fit, in bytes.
        room: u64,
    },
}

/// Kernel image formats this VMM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed bzImage (`arch/x86/boot/bzImage`), booted through its 64-bit entry point.
    BzImage,
    /// An uncompressed ELF `vmlinux`, booted through PVH if it has the entry note, else at
    /// `e_entry` in 64-bit mode.
    Elf,
}

impl fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelFormat::BzImage => f.write_str("bzImage"),
            KernelFormat::Elf => f.write_str("ELF vmlinux"),
        }
    }
}

/// Where, and in which CPU mode, the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit long mode with paging (identity map), `%rsi` = zero page
    /// (Documentation/x86/boot.rst, "64-bit Boot Protocol").
    Long64(GuestAddress),
    /// 32-bit protected mode without paging, `%ebx` = `hvm_start_info`
    /// (xen docs/misc/pvh.pandoc, "x86/HVM direct boot ABI").
    Pvh(GuestAddress),
}

impl EntryPoint {
    /// The entry address, whichever the mode.
    pub fn addr(&self) -> GuestAddress {
        match *self {
            EntryPoint::Long64(a) | EntryPoint::Pvh(a) => a,
        }
    }
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadedKernel {
    /// The image format.
    pub format: KernelFormat,
    /// Where to start the boot vCPU.
    pub entry: EntryPoint,
    /// First guest address past the kernel, including the room a bzImage needs to decompress
    /// itself (`init_size`) and an ELF's `.bss` (`p_memsz`): nothing else may be placed below.
    pub kernel_end: GuestAddress,
    /// The bzImage's setup header (with `code32_start` set to the load address); `None` for ELF.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest physical address, page aligned.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

/// Reads as many bytes as the file has, up to `buf.len()`, from its start.
fn read_prefix(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Recognises the kernel format by its magic numbers and leaves the file at offset 0.
///
/// - ELF: `\x7fELF` at offset 0; it must also be ELFCLASS64, little-endian and `EM_X86_64`.
/// - bzImage: `boot_flag` = 0xaa55 at 0x1fe and `header` = "HdrS" at 0x202
///   (Documentation/x86/boot.rst, "The Real-Mode Kernel Header").
pub fn detect_format(file: &mut File) -> Result<KernelFormat, Error> {
    let mut buf = [0u8; PROBE_LEN];
    let len = read_prefix(file, &mut buf).map_err(Error::ReadKernel)?;
    file.seek(SeekFrom::Start(0)).map_err(Error::ReadKernel)?;
    let buf = &buf[..len];

    if buf.starts_with(&ELF_MAGIC) {
        // e_ident and e_machine (offset 18) are laid out alike in ELF32 and ELF64 headers.
        if buf.len() < 20 {
            return Err(Error::BadElf(
                "the file is shorter than an ELF header".into(),
            ));
        }
        match buf[EI_CLASS] {
            ELFCLASS64 => {}
            ELFCLASS32 => return Err(Error::ElfNot64Bit),
            class => {
                return Err(Error::BadElf(format!(
                    "its ELF class {class} is not ELFCLASS64"
                )))
            }
        }
        if buf[EI_DATA] != ELFDATA2LSB {
            return Err(Error::BadElf("it is big-endian".into()));
        }
        let machine = u16::from_le_bytes([buf[18], buf[19]]);
        if machine != EM_X86_64 {
            return Err(Error::ElfNotX86_64 { machine });
        }
        if buf.len() < size_of::<Elf64_Ehdr>() {
            return Err(Error::BadElf(
                "the file is shorter than an ELF header".into(),
            ));
        }
        return Ok(KernelFormat::Elf);
    }

    if buf.len() >= HDR_MAGIC_OFFSET + 4 {
        let boot_flag = u16::from_le_bytes([buf[BOOT_FLAG_OFFSET], buf[BOOT_FLAG_OFFSET + 1]]);
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&buf[HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4]);
        if boot_flag == KERNEL_BOOT_FLAG_MAGIC && u32::from_le_bytes(magic) == KERNEL_HDR_MAGIC {
            return Ok(KernelFormat::BzImage);
        }
    }
    Err(Error::NotAKernel)
}

/// End (exclusive) of the RAM region holding the kernel load address: the first RAM region,
/// `[0, min(mem_size, MMIO_GAP_START))`, as [`crate::memory::ram_regions`] lays it out.
fn low_ram_end(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let region = mem
        .find_region(HIMEM_START)
        .ok_or(Error::NoRamAtLoadAddress)?;
    Ok(region.start_addr().0.saturating_add(region.len()))
}

/// Loads the kernel: [`place_kernel`], then the copy.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, Error> {
    let (kernel, placement) = place_kernel(mem, file)?;
    placement.copy(mem, file).map_err(Error::ReadKernel)?;
    Ok(kernel)
}

/// Parses and checks the kernel and decides where it goes, without copying it: a bzImage at
/// [`HIMEM_START`] (entry at +0x200, 64-bit), or an ELF `vmlinux` at its physical addresses
/// (PVH entry when the `XEN_ELFNOTE_PHYS32_ENTRY` note is there, else `e_entry` in 64-bit
/// mode). The [`Placement`] says which bytes of the file go where; guest memory is untouched.
pub fn place_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
) -> Result<(LoadedKernel, Placement), Error> {
    let format = detect_format(file)?;
    let room = low_ram_end(mem)?.saturating_sub(HIMEM_START.0);
    match format {
        KernelFormat::BzImage => place_bzimage(mem, file, room),
        KernelFormat::Elf => place_elf(mem, file, room),
    }
}

fn place_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    room: u64,
) -> Result<(LoadedKernel, Placement), Error> {
    let mut hdr = setup_header::default();
    file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .and_then(|_| file.read_exact(hdr.as_mut_slice()))
        .map_err(Error::ReadKernel)?;
    let file_len = file.metadata().map_err(Error::ReadKernel)?.len();

    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(Error::BadBzImage(format!(
            "it uses boot protocol {}.{:02}; 2.06 or later is needed",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(Error::BadBzImage(
            "it is a zImage that loads at 0x10000 (LOADED_HIGH is clear)".into(),
        ));
    }
    // xloadflags exists since protocol 2.12; XLF_KERNEL_64 says the 64-bit entry is at 0x200.
    let xloadflags = hdr.xloadflags;
    if version >= 0x020c && xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::BadBzImage(
            "it has no 64-bit entry point (XLF_KERNEL_64 is clear): build the kernel for x86_64"
                .into(),
        ));
    }

    // The real-mode setup is setup_sects (0 means 4) sectors plus the boot sector.
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let payload = file_len.checked_sub(setup_size).ok_or_else(|| {
        Error::BadBzImage(format!(
            "the file ({file_len} bytes) is shorter than its real-mode setup ({setup_size} bytes)"
        ))
    })?;
    // init_size (protocol 2.10+): memory the kernel needs from its load address while it
    // decompresses and starts; the initrd must stay out of it.
    let init_size = if version >= 0x020a {
        u64::from(hdr.init_size)
    } else {
        0
    };
    let needed = payload.max(init_size);
    if needed > room {
        return Err(Error::KernelTooLarge { size: needed, room });
    }

    let mut reader = PlacingReader::new(file, mem).map_err(Error::ReadKernel)?;
    let result = BzImage::load(mem, Some(HIMEM_START), &mut reader, Some(HIMEM_START)).map_err(
        |source| Error::LoadKernel {
            format: KernelFormat::BzImage,
            source,
        },
    )?;
    let kernel_end = result.kernel_end.max(HIMEM_START.0 + needed);
    let kernel = LoadedKernel {
        format: KernelFormat::BzImage,
        entry: EntryPoint::Long64(result.kernel_load.unchecked_add(KERNEL_64BIT_ENTRY_OFFSET)),
        kernel_end: GuestAddress(kernel_end),
        setup_header: result.setup_header.or(Some(hdr)),
    };
    Ok((kernel, reader.into_placement()))
}

fn place_elf(
    mem: &GuestMemoryMmap,
    file: &mut File,
    room: u64,
) -> Result<(LoadedKernel, Placement), Error> {
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(ehdr.as_mut_slice()))
        .map_err(Error::ReadKernel)?;
    if ehdr.e_entry < HIMEM_START.0 {
        return Err(Error::BadElf(format!(
            "its entry point {:#x} is below 1 MiB, where the VMM keeps its boot structures",
            ehdr.e_entry
        )));
    }
    if usize::from(ehdr.e_phentsize) != size_of::<Elf64_Phdr>() {
        return Err(Error::BadElf(format!(
            "program header entries are {} bytes, not {}",
            ehdr.e_phentsize,
            size_of::<Elf64_Phdr>()
        )));
    }

    // Check every loadable segment before copying anything: it must lie in guest RAM and
    // clear of what the VMM writes itself (anywhere else, below 1 MiB too, is fine: binutils'
    // default `-z separate-code` puts a segment of just the ELF headers at 0xff000).
    file.seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(Error::ReadKernel)?;
    let mut end = HIMEM_START.0;
    let mut segments: Vec<std::ops::Range<u64>> = Vec::new();
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        file.read_exact(phdr.as_mut_slice())
            .map_err(Error::ReadKernel)?;
        if phdr.p_type != PT_LOAD || phdr.p_memsz == 0 {
            continue;
        }
        let segment_end = check_segment(mem, &phdr, room)?;
        // The segments are copied in pieces by several threads at once, in no set order.
        if let Some(other) = segments
            .iter()
            .find(|s| phdr.p_paddr < s.end && s.start < segment_end)
        {
            return Err(Error::BadElf(format!(
                "its segments [{:#x}, {:#x}) and [{:#x}, {segment_end:#x}) overlap",
                other.start, other.end, phdr.p_paddr
            )));
        }
        segments.push(phdr.p_paddr..segment_end);
        end = end.max(segment_end);
    }
    if segments.is_empty() {
        return Err(Error::BadElf("it has no loadable segment".into()));
    }

    let mut reader = PlacingReader::new(file, mem).map_err(Error::ReadKernel)?;
    let result = Elf::load(mem, None, &mut reader, Some(HIMEM_START)).map_err(|source| {
        Error::LoadKernel {
            format: KernelFormat::Elf,
            source,
        }
    })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => {
            EntryPoint::Long64(GuestAddress(ehdr.e_entry))
        }
    };
    // The vCPU starts there with paging off (PVH) or on the identity map: it must be code the
    // image brought, not a hole or past the end of RAM.
    let entry_addr = entry.addr().0;
    if !segments.iter().any(|s| s.contains(&entry_addr)) {
        return Err(Error::BadElf(format!(
            "its entry point {entry_addr:#x} is not inside any loadable segment"
        )));
    }
    let kernel = LoadedKernel {
        format: KernelFormat::Elf,
        entry,
        kernel_end: GuestAddress(result.kernel_end.max(end)),
        setup_header: None,
    };
    Ok((kernel, reader.into_placement()))
}

/// Checks one `PT_LOAD` segment of an ELF kernel against guest RAM and the ranges the VMM
/// writes ([`VMM_BOOT_RANGES`]); returns the first address past it.
fn check_segment(mem: &GuestMemoryMmap, phdr: &Elf64_Phdr, room: u64) -> Result<u64, Error> {
    let start = phdr.p_paddr;
    if phdr.p_filesz > phdr.p_memsz {
        return Err(Error::BadElf(format!(
            "the segment at {start:#x} has more file bytes than memory bytes"
        )));
    }
    let end = start
        .checked_add(phdr.p_memsz)
        .ok_or_else(|| Error::BadElf("a segment ends past the 64-bit address space".into()))?;
    let region = mem.find_region(GuestAddress(start)).ok_or_else(|| {
        Error::BadElf(format!(
            "the segment [{start:#x}, {end:#x}) is not in guest RAM (the 32-bit MMIO gap, or \
             past the end of memory)"
        ))
    })?;
    let region_end = region.start_addr().0.saturating_add(region.len());
    if end > region_end {
        return Err(if region.start_addr().0 == 0 {
            Error::KernelTooLarge {
                size: end.saturating_sub(HIMEM_START.0),
                room,
            }
        } else {
            Error::BadElf(format!(
                "the segment [{start:#x}, {end:#x}) runs past the end of guest RAM at \
                 {region_end:#x}; give the guest more memory (--memory)"
            ))
        });
    }
    if let Some(used) = VMM_BOOT_RANGES
        .iter()
        .find(|r| start < r.end.0 && r.start.0 < end)
    {
        return Err(Error::BadElf(format!(
            "the segment [{start:#x}, {end:#x}) overlaps the VMM's {} at [{:#x}, {:#x})",
            used.name, used.start.0, used.end.0
        )));
    }
    Ok(end)
}

/// The highest address (exclusive) the initrd may reach: `initrd_addr_max + 1` from the
/// bzImage header when set, else [`DEFAULT_INITRD_ADDR_MAX`] + 1, and never past the first
/// RAM region.
fn initrd_limit(mem: &GuestMemoryMmap, kernel: &LoadedKernel) -> Result<u64, Error> {
    let addr_max = kernel
        .setup_header
        .map(|hdr| u64::from(hdr.initrd_addr_max))
        .filter(|&max| max != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    Ok((addr_max + 1).min(low_ram_end(mem)?))
}

/// Loads the initrd: [`place_initrd`], then the copy.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel: &LoadedKernel,
) -> Result<InitrdRange, Error> {
    let (range, placement) = place_initrd(mem, file, kernel)?;
    placement.copy(mem, file).map_err(Error::ReadInitrd)?;
    Ok(range)
}

/// Places the initrd as the boot protocol recommends (Documentation/x86/boot.rst, "ramdisk_image"
/// and `initrd_addr_max`): at the highest page-aligned address where it lies wholly below
/// `min(initrd_addr_max + 1, end of the first RAM region)` and above `kernel.kernel_end`. The
/// whole file goes there; nothing is copied yet.
pub fn place_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel: &LoadedKernel,
) -> Result<(InitrdRange, Placement), Error> {
    let size = file.metadata().map_err(Error::ReadInitrd)?.len();
    if size == 0 {
        return Err(Error::EmptyInitrd);
    }
    let limit = initrd_limit(mem, kernel)?;
    let lowest = kernel.kernel_end.0.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    let room = limit.saturating_sub(lowest);
    let len = usize::try_from(size).map_err(|_| Error::InitrdTooLarge { size, room })?;
    if size > room {
        return Err(Error::InitrdTooLarge { size, room });
    }
    // limit - size >= lowest, and lowest is page aligned, so rounding down stays above it.
    let addr = GuestAddress((limit - size) & !(PAGE_SIZE - 1));
    Ok((
        InitrdRange { addr, size: len },
        Placement::whole(addr, size),
    ))
}

#[cfg(test)]
pub(crate) mod tests;
