//! Tests of kernel and initrd loading, on fake bzImage and ELF headers.

use super::*;
use crate::test_util::{guest_mem, TempFile};
use linux_loader::elf::{Elf64_Nhdr, EI_NIDENT, PT_NOTE};
use vm_memory::Bytes;

const MIB: usize = 1 << 20;

/// A fake bzImage: boot sector + `setup_sects` sectors of setup, then `payload` bytes.
pub(crate) fn fake_bzimage(payload: usize, init_size: u32, initrd_addr_max: u32) -> Vec<u8> {
    let setup_sects = 4u8;
    let setup_size = (usize::from(setup_sects) + 1) * 512;
    let mut image = vec![0u8; setup_size + payload];
    let hdr = setup_header {
        setup_sects,
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        version: 0x020f,
        loadflags: LOADED_HIGH,
        code32_start: 0x10_0000,
        initrd_addr_max,
        kernel_alignment: 0x20_0000,
        xloadflags: XLF_KERNEL_64,
        cmdline_size: 2047,
        init_size,
        ..Default::default()
    };
    let off = SETUP_HEADER_OFFSET as usize;
    image[off..off + size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
    for (i, b) in image[setup_size..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    image
}

/// A minimal ELF64 x86_64 executable with one PT_LOAD segment of `code` at `paddr` (memsz
/// `memsz`), and optionally a PT_NOTE holding a Xen PVH entry note.
pub(crate) fn fake_elf(code: &[u8], paddr: u64, memsz: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    let ehdr_size = size_of::<Elf64_Ehdr>();
    let phdr_size = size_of::<Elf64_Phdr>();
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let note_off = ehdr_size + phnum * phdr_size;
    // A note that is not the PVH one first, to check the loader skips it, then the PVH note.
    let mut note = Vec::new();
    if let Some(entry) = pvh_entry {
        for (name, n_type, desc) in [
            (&b"GNU\0"[..], 3u32, 0xdead_beefu32),
            (&b"Xen\0"[..], 18u32, entry),
        ] {
            let nhdr = Elf64_Nhdr {
                n_namesz: name.len() as u32,
                n_descsz: 4,
                n_type,
            };
            note.extend_from_slice(nhdr.as_slice());
            note.extend_from_slice(name);
            note.extend_from_slice(&desc.to_le_bytes());
        }
    }
    let code_off = (note_off + note.len() + 0xf) & !0xf;

    let mut e_ident = [0u8; EI_NIDENT];
    e_ident[..4].copy_from_slice(&ELF_MAGIC);
    e_ident[4] = ELFCLASS64;
    e_ident[5] = ELFDATA2LSB;
    e_ident[6] = 1; // EV_CURRENT
    let ehdr = Elf64_Ehdr {
        e_ident,
        e_type: 2, // ET_EXEC
        e_machine: EM_X86_64,
        e_version: 1,
        e_entry: paddr,
        e_phoff: ehdr_size as u64,
        e_ehsize: ehdr_size as u16,
        e_phentsize: phdr_size as u16,
        e_phnum: phnum as u16,
        ..Default::default()
    };
    let load = Elf64_Phdr {
        p_type: PT_LOAD,
        p_flags: 5,
        p_offset: code_off as u64,
        p_vaddr: 0xffff_ffff_8000_0000u64.wrapping_add(paddr),
        p_paddr: paddr,
        p_filesz: code.len() as u64,
        p_memsz: memsz,
        p_align: 0x1000,
    };
    let mut image = Vec::new();
    image.extend_from_slice(ehdr.as_slice());
    image.extend_from_slice(load.as_slice());
    if pvh_entry.is_some() {
        let note_phdr = Elf64_Phdr {
            p_type: PT_NOTE,
            p_offset: note_off as u64,
            p_filesz: note.len() as u64,
            p_memsz: note.len() as u64,
            p_align: 4,
            ..Default::default()
        };
        image.extend_from_slice(note_phdr.as_slice());
        image.extend_from_slice(&note);
    }
    image.resize(code_off, 0);
    image.extend_from_slice(code);
    image
}

fn detect(bytes: &[u8]) -> Result<KernelFormat, Error> {
    let mut f = TempFile::new(bytes);
    detect_format(f.file())
}

#[test]
fn detects_fake_bzimage() {
    assert_eq!(
        detect(&fake_bzimage(16, 0, 0)).unwrap(),
        KernelFormat::BzImage
    );
    // Only the two magics matter for detection.
    let mut bytes = vec![0u8; 0x300];
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = 0xaa;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    assert_eq!(detect(&bytes).unwrap(), KernelFormat::BzImage);
    // Without the boot flag it is not a bzImage.
    bytes[0x1fe] = 0;
    assert!(matches!(detect(&bytes), Err(Error::NotAKernel)));
}

#[test]
fn detects_elf64() {
    assert_eq!(
        detect(&fake_elf(&[0x90; 4], 0x10_0000, 4, None)).unwrap(),
        KernelFormat::Elf
    );
}

#[test]
fn rejects_elf32_and_other_machines() {
    let mut elf32 = fake_elf(&[0x90; 4], 0x10_0000, 4, None);
    elf32[4] = 1; // ELFCLASS32
    let err = detect(&elf32).unwrap_err();
    assert!(matches!(err, Error::ElfNot64Bit));
    assert!(err.to_string().contains("32-bit"), "{err}");
    // A real ELF32 header is 52 bytes, shorter than an ELF64 one: still "32-bit".
    assert!(matches!(detect(&elf32[..52]), Err(Error::ElfNot64Bit)));
    elf32[4] = 7;
    assert!(matches!(detect(&elf32), Err(Error::BadElf(_))));

    let mut arm = fake_elf(&[0x90; 4], 0x10_0000, 4, None);
    arm[18] = 183; // EM_AARCH64
    assert!(matches!(
        detect(&arm),
        Err(Error::ElfNotX86_64 { machine: 183 })
    ));
}

#[test]
fn rejects_random_bytes() {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let err = detect(&bytes).unwrap_err();
    assert!(matches!(err, Error::NotAKernel));
    let msg = err.to_string();
    assert!(msg.contains("bzImage") && msg.contains("ELF"), "{msg}");
    assert!(matches!(detect(&[]), Err(Error::NotAKernel)));
    assert!(matches!(detect(b"\x7fELF"), Err(Error::BadElf(_))));
}

#[test]
fn loads_fake_bzimage() {
    let mem = guest_mem(16 * MIB);
    let image = fake_bzimage(0x3000, 0x8000, 0x37ff_ffff);
    let mut f = TempFile::new(&image);
    let k = load_kernel(&mem, f.file()).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(k.entry, EntryPoint::Long64(GuestAddress(0x10_0200)));
    // init_size (0x8000) is larger than the payload (0x3000).
    assert_eq!(k.kernel_end, GuestAddress(0x10_8000));
    let hdr = k.setup_header.unwrap();
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    // The payload (after 5 sectors of setup) is at 1 MiB.
    let mut buf = [0u8; 16];
    mem.read_slice(&mut buf, HIMEM_START).unwrap();
    assert_eq!(&buf[..], &image[5 * 512..5 * 512 + 16]);
}

#[test]
fn bzimage_checks() {
    let mem = guest_mem(16 * MIB);
    // Larger than guest memory.
    let mut f = TempFile::new(&fake_bzimage(0x1000, 32 << 20, 0));
    assert!(matches!(
        load_kernel(&mem, f.file()),
        Err(Error::KernelTooLarge { size, room }) if size == 32 << 20 && room == 15 << 20
    ));
    // 32-bit only kernel.
    let mut image = fake_bzimage(0x1000, 0, 0);
    image[0x236] = 0; // xloadflags
    let mut f = TempFile::new(&image);
    assert!(matches!(
        load_kernel(&mem, f.file()),
        Err(Error::BadBzImage(_))
    ));
    // Old protocol.
    let mut image = fake_bzimage(0x1000, 0, 0);
    image[0x206..0x208].copy_from_slice(&0x0202u16.to_le_bytes());
    let mut f = TempFile::new(&image);
    let err = load_kernel(&mem, f.file()).unwrap_err();
    assert!(err.to_string().contains("2.02"), "{err}");
}

#[test]
fn loads_elf_long64() {
    let mem = guest_mem(16 * MIB);
    let code = [0xf4u8; 32]; // hlt
    let mut f = TempFile::new(&fake_elf(&code, 0x20_0000, 0x10_0000, None));
    let k = load_kernel(&mem, f.file()).unwrap();
    assert_eq!(k.format, KernelFormat::Elf);
    assert_eq!(k.entry, EntryPoint::Long64(GuestAddress(0x20_0000)));
    assert_eq!(k.kernel_end, GuestAddress(0x30_0000));
    assert!(k.setup_header.is_none());
    let mut buf = [0u8; 32];
    mem.read_slice(&mut buf, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(buf, code);
}

#[test]
fn loads_elf_pvh() {
    let mem = guest_mem(16 * MIB);
    let mut f = TempFile::new(&fake_elf(&[0xf4; 32], 0x20_0000, 32, Some(0x20_0010)));
    let k = load_kernel(&mem, f.file()).unwrap();
    assert_eq!(k.entry, EntryPoint::Pvh(GuestAddress(0x20_0010)));
    assert_eq!(k.entry.addr(), GuestAddress(0x20_0010));
}

#[test]
fn elf_checks() {
    let mem = guest_mem(16 * MIB);
    let mut f = TempFile::new(&fake_elf(&[0xf4; 32], 0x8000, 32, None));
    assert!(matches!(load_kernel(&mem, f.file()), Err(Error::BadElf(_))));
    // Entry point above 1 MiB but a segment below it.
    let mut image = fake_elf(&[0xf4; 32], 0x8000, 32, None);
    image[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // e_entry
    let mut f = TempFile::new(&image);
    let err = load_kernel(&mem, f.file()).unwrap_err();
    assert!(
        err.to_string().contains(
            "the segment [0x8000, 0x8020) overlaps the VMM's boot stack at [0x8000, 0x9000)"
        ),
        "{err}"
    );
    let mut f = TempFile::new(&fake_elf(&[0xf4; 32], 0x20_0000, 32 << 20, None));
    assert!(matches!(
        load_kernel(&mem, f.file()),
        Err(Error::KernelTooLarge { .. })
    ));
}

/// An ELF with the entry point in a 32-byte segment at 2 MiB and a second segment at `paddr`
/// (`memsz` bytes, the same 32 bytes of code in the file), the layout of binutils' default
/// `-z separate-code` (a segment of only the headers, then the code).
pub(crate) fn elf_with_segment_at(paddr: u64, memsz: u64) -> Vec<u8> {
    let image = fake_elf(&[0xf4; 32], 0x20_0000, 32, None);
    let ehdr_size = size_of::<Elf64_Ehdr>();
    let phdr_size = size_of::<Elf64_Phdr>();
    let code_off = (ehdr_size + 2 * phdr_size) as u64;
    let mut ehdr = Elf64_Ehdr::default();
    ehdr.as_mut_slice().copy_from_slice(&image[..ehdr_size]);
    ehdr.e_phnum = 2;
    let mut code = Elf64_Phdr::default();
    code.as_mut_slice()
        .copy_from_slice(&image[ehdr_size..ehdr_size + phdr_size]);
    let code_bytes = &image[code.p_offset as usize..];
    code.p_offset = code_off;
    let other = Elf64_Phdr {
        p_paddr: paddr,
        p_vaddr: paddr,
        p_memsz: memsz,
        p_filesz: memsz.min(32),
        ..code
    };
    let mut out = ehdr.as_slice().to_vec();
    out.extend_from_slice(code.as_slice());
    out.extend_from_slice(other.as_slice());
    out.extend_from_slice(code_bytes);
    out
}

// Found by fuzz/fuzz_targets/kernel_loader.rs: an ELF whose entry point is in no segment (here
// in the MMIO hole) was loaded, and its vCPU would have started in a hole.
#[test]
fn elf_entry_outside_every_segment_is_refused() {
    let mem = guest_mem(16 * MIB);
    for (e_entry, pvh) in [
        (0xf910_0000u64, None),
        (0x20_0020, None), // just past the 32 bytes of the segment
        (0x20_0000, Some(0x1f_fff0u32)),
    ] {
        let mut image = fake_elf(&[0xf4; 32], 0x20_0000, 32, pvh);
        image[24..32].copy_from_slice(&e_entry.to_le_bytes());
        let mut f = TempFile::new(&image);
        let err = load_kernel(&mem, f.file()).unwrap_err().to_string();
        let entry = pvh.map_or(e_entry, u64::from);
        assert!(
            err.contains(&format!(
                "entry point {entry:#x} is not inside any loadable segment"
            )),
            "{err}"
        );
    }
}

#[test]
fn elf_segments_below_1_mib_load_where_the_vmm_writes_nothing() {
    let mem = guest_mem(16 * MIB);
    // binutils' default `-z separate-code`: the ELF headers alone, at 0xff000.
    let mut f = TempFile::new(&elf_with_segment_at(0xf_f000, 0x158));
    let k = load_kernel(&mem, f.file()).unwrap();
    let mut buf = [0u8; 32];
    mem.read_slice(&mut buf, GuestAddress(0xf_f000)).unwrap();
    assert_eq!(buf, [0xf4; 32]);
    assert_eq!(
        k.kernel_end,
        GuestAddress(0x20_0020),
        "the kernel ends where its code segment ends, whatever lies below 1 MiB"
    );
    // Conventional memory between the VMM's own pages is the kernel's too.
    let mut f = TempFile::new(&elf_with_segment_at(0x1_0000, 0x1000));
    load_kernel(&mem, f.file()).unwrap();
}

#[test]
fn elf_segments_over_the_vmms_boot_ranges_name_both_ranges() {
    let mem = guest_mem(16 * MIB);
    for (paddr, memsz, expected) in [
        (0x7800, 0x100, "[0x7800, 0x7900) overlaps the VMM's Linux zero page at [0x7000, 0x8000)"),
        (0x4000, 0x2001, "[0x4000, 0x6001) overlaps the VMM's PVH start info, memory map and module list at [0x6000, 0x7000)"),
        (0x9_f000, 0x1000, "[0x9f000, 0xa0000) overlaps the VMM's MP table (EBDA) at [0x9fc00, 0xa0000)"),
        (0x1_ff00, 0x200, "[0x1ff00, 0x20100) overlaps the VMM's kernel command line at [0x20000, 0x30000)"),
        (0, 0x1000, "[0x0, 0x1000) overlaps the VMM's boot GDT and IDT at [0x500, 0x530)"),
    ] {
        let mut f = TempFile::new(&elf_with_segment_at(paddr, memsz));
        let err = load_kernel(&mem, f.file()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    // Every range the VMM writes is listed, so none of them can be loaded over.
    for range in VMM_BOOT_RANGES {
        let mut f = TempFile::new(&elf_with_segment_at(range.start.0, 32));
        let err = load_kernel(&mem, f.file()).unwrap_err().to_string();
        assert!(err.contains(range.name), "{err}");
    }
}

#[test]
fn elf_segments_outside_guest_ram_are_refused() {
    let mem = guest_mem(16 * MIB);
    let mut f = TempFile::new(&elf_with_segment_at(0xd000_0000, 0x1000));
    let err = load_kernel(&mem, f.file()).unwrap_err().to_string();
    assert!(
        err.contains("[0xd0000000, 0xd0001000) is not in guest RAM"),
        "{err}"
    );
}

fn kernel(end: u64, setup_header: Option<setup_header>) -> LoadedKernel {
    LoadedKernel {
        format: if setup_header.is_some() {
            KernelFormat::BzImage
        } else {
            KernelFormat::Elf
        },
        entry: EntryPoint::Long64(HIMEM_START),
        kernel_end: GuestAddress(end),
        setup_header,
    }
}

#[test]
fn initrd_goes_high_and_page_aligned() {
    let mem = guest_mem(64 * MIB);
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut f = TempFile::new(&data);
    let k = kernel(0x20_0123, None);
    let r = load_initrd(&mem, f.file(), &k).unwrap();
    assert_eq!(r.size, 5000);
    assert_eq!(r.addr.0 % 0x1000, 0);
    assert!(r.addr.0 >= k.kernel_end.0);
    assert!(r.addr.0 + 5000 <= 64 << 20);
    // Highest such address: it would not fit one page higher.
    assert!(r.addr.0 + 0x1000 + 5000 > 64 << 20);
    let mut back = vec![0u8; 5000];
    mem.read_slice(&mut back, r.addr).unwrap();
    assert_eq!(back, data);
}

#[test]
fn initrd_respects_initrd_addr_max() {
    let mem = guest_mem(64 * MIB);
    let mut f = TempFile::new(&[7u8; 0x1800]);
    let hdr = setup_header {
        initrd_addr_max: 0x00ff_ffff,
        ..Default::default()
    };
    let r = load_initrd(&mem, f.file(), &kernel(0x20_0000, Some(hdr))).unwrap();
    assert_eq!(r.addr, GuestAddress(0x100_0000 - 0x2000));
    // A zero initrd_addr_max means "not set": the end of RAM limits instead.
    let r = load_initrd(
        &mem,
        f.file(),
        &kernel(0x20_0000, Some(setup_header::default())),
    )
    .unwrap();
    assert_eq!(r.addr, GuestAddress((64 << 20) - 0x2000));
}

#[test]
fn initrd_too_large() {
    let mem = guest_mem(16 * MIB);
    let mut f = TempFile::new(&vec![1u8; 2 * MIB]);
    let err = load_initrd(&mem, f.file(), &kernel(15 * MIB as u64 + 1, None)).unwrap_err();
    match err {
        Error::InitrdTooLarge { size, room } => {
            assert_eq!(size, 2 * MIB as u64);
            assert_eq!(room, MIB as u64 - 0x1000);
        }
        e => panic!("unexpected {e}"),
    }
    let msg = load_initrd(&mem, f.file(), &kernel(15 * MIB as u64, None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("2.0 MiB") && msg.contains("1.0 MiB") && msg.contains("--memory"),
        "{msg}"
    );
    // Exactly fitting is fine.
    let mut f = TempFile::new(&vec![1u8; MIB]);
    let r = load_initrd(&mem, f.file(), &kernel(15 * MIB as u64, None)).unwrap();
    assert_eq!(r.addr, GuestAddress(15 * MIB as u64));
    let mut empty = TempFile::new(&[]);
    assert!(matches!(
        load_initrd(&mem, empty.file(), &kernel(0x20_0000, None)),
        Err(Error::EmptyInitrd)
    ));
}
