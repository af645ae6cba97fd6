//! The initrd placement: for arbitrary kernel ends, `initrd_addr_max` values, initrd sizes and
//! three memory layouts, a placed initrd is page aligned, above the kernel, below both limits,
//! inside the first RAM region, and holds the file's bytes.
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::{LazyLock, Mutex};

use boot::loader::{load_initrd, EntryPoint, KernelFormat, LoadedKernel, DEFAULT_INITRD_ADDR_MAX};
use libfuzzer_sys::fuzz_target;
use linux_loader::bootparam::setup_header;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_fuzz::{empty_memfd, guarded_memory, Input};

/// Each layout with the end of its first region (RAM from 0, so the one that holds 1 MiB).
static LAYOUTS: LazyLock<Vec<(GuestMemoryMmap, u64)>> = LazyLock::new(|| {
    [
        vec![(0, 0x20_0000)],
        vec![(0, 0x14_3000)],
        vec![(0, 0x30_0000), (0x1_0000_0000, 0x10_0000)],
    ]
    .into_iter()
    .map(|ranges| {
        let end = ranges[0].1 as u64;
        (guarded_memory(&ranges), end)
    })
    .collect()
});
static FILE: LazyLock<Mutex<std::fs::File>> = LazyLock::new(|| Mutex::new(empty_memfd("initrd")));

const FIRST: u8 = 0xa5;
const LAST: u8 = 0x5a;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (mem, ram_end) = &LAYOUTS[usize::from(input.u8()) % LAYOUTS.len()];
    let flags = input.u8();
    let raw_end = input.u64();
    let kernel_end = if flags & 1 == 0 {
        raw_end % ram_end
    } else {
        raw_end
    };
    let setup_header = (flags & 2 != 0).then(|| setup_header {
        initrd_addr_max: input.u32(),
        ..Default::default()
    });
    let size = u64::from(input.u32()) % (ram_end + 0x2000);
    let kernel = LoadedKernel {
        format: if setup_header.is_some() {
            KernelFormat::BzImage
        } else {
            KernelFormat::Elf
        },
        entry: EntryPoint::Long64(GuestAddress(0x10_0000)),
        kernel_end: GuestAddress(kernel_end),
        setup_header,
    };

    let mut file = FILE.lock().unwrap();
    file.set_len(0).unwrap();
    file.set_len(size).unwrap();
    if size > 0 {
        file.write_all_at(&[FIRST], 0).unwrap();
        file.write_all_at(&[LAST], size - 1).unwrap();
    }
    let Ok(range) = load_initrd(mem, &mut file, &kernel) else {
        return;
    };
    let addr = range.addr.0;
    let end = addr + range.size as u64;
    let addr_max = setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    assert_eq!(range.size as u64, size);
    assert_eq!(addr % 4096, 0, "{range:?} not page aligned");
    assert!(
        addr >= kernel_end,
        "{range:?} below the kernel's end {kernel_end:#x}"
    );
    assert!(
        end <= *ram_end,
        "{range:?} past the first region's end {ram_end:#x}"
    );
    assert!(
        end <= addr_max + 1,
        "{range:?} above initrd_addr_max {addr_max:#x}"
    );
    let first: u8 = mem.read_obj(range.addr).unwrap();
    let last: u8 = mem.read_obj(GuestAddress(end - 1)).unwrap();
    // A one-byte initrd is its last byte.
    assert_eq!((first, last), (if size == 1 { LAST } else { FIRST }, LAST));
});
