//! Tests of placing files in guest memory and copying them there later, on several threads.

use vm_memory::Bytes;

use super::*;
use crate::loader::tests::{fake_bzimage, fake_elf};
use crate::loader::{place_initrd, place_kernel, KernelFormat};
use crate::test_util::{guest_mem, TempFile};

const MIB: u64 = 1 << 20;

/// `len` bytes that differ from one offset to the next (and are never all zero).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

#[test]
fn placing_an_elf_kernel_notes_its_segment_and_copies_nothing() {
    let mem = guest_mem(32 * MIB as usize);
    let code = pattern(3 * MIB as usize + 123);
    let image = fake_elf(
        &code,
        0x100_0000,
        code.len() as u64 + 4096,
        Some(0x100_0000),
    );
    let mut f = TempFile::new(&image);
    let (kernel, placement) = place_kernel(&mem, f.file()).unwrap();
    assert_eq!(kernel.format, KernelFormat::Elf);
    let offset = (image.len() - code.len()) as u64;
    assert_eq!(
        placement.extents(),
        &[Extent {
            offset,
            addr: GuestAddress(0x100_0000),
            len: code.len() as u64
        }]
    );
    // linux-loader read the headers and the PVH note, but no byte of the segment landed.
    assert!(read(&mem, 0x100_0000, code.len()).iter().all(|&b| b == 0));

    placement.copy(&mem, f.file()).unwrap();
    assert_eq!(read(&mem, 0x100_0000, code.len()), code);
}

#[test]
fn placing_a_bzimage_notes_its_payload_at_1_mib() {
    let mem = guest_mem(16 * MIB as usize);
    let image = fake_bzimage(5000, 0, 0);
    let mut f = TempFile::new(&image);
    let (_, placement) = place_kernel(&mem, f.file()).unwrap();
    // Boot sector + 4 setup sectors, then the payload.
    assert_eq!(
        placement.extents(),
        &[Extent {
            offset: 5 * 512,
            addr: GuestAddress(0x10_0000),
            len: 5000
        }]
    );
    assert!(read(&mem, 0x10_0000, 5000).iter().all(|&b| b == 0));
    placement.copy(&mem, f.file()).unwrap();
    assert_eq!(read(&mem, 0x10_0000, 5000), image[5 * 512..]);
}

#[test]
fn a_segment_past_the_end_of_the_file_is_refused_when_placed() {
    let mem = guest_mem(16 * MIB as usize);
    let code = pattern(8192);
    let mut image = fake_elf(&code, 0x10_0000, 8192, None);
    image.truncate(image.len() - 100);
    let mut f = TempFile::new(&image);
    assert!(matches!(
        place_kernel(&mem, f.file()),
        Err(crate::loader::Error::LoadKernel { .. })
    ));
}

#[test]
fn chunks_end_at_huge_page_boundaries_and_cover_every_byte() {
    let file = TempFile::new(b"");
    let placement = Placement {
        extents: vec![
            Extent {
                offset: 100,
                addr: GuestAddress(CHUNK - 10),
                len: 2 * CHUNK + 20,
            },
            Extent {
                offset: 0,
                addr: GuestAddress(8 * CHUNK),
                len: 7,
            },
        ],
    };
    let queue = CopyQueue::new(&[(file.as_file(), &placement)]);
    let chunks: Vec<Extent> = queue.chunks.iter().map(|(_, e)| *e).collect();
    assert_eq!(
        chunks,
        [
            (100, CHUNK - 10, 10),
            (110, CHUNK, CHUNK),
            (110 + CHUNK, 2 * CHUNK, CHUNK),
            (110 + 2 * CHUNK, 3 * CHUNK, 10),
            (0, 8 * CHUNK, 7),
        ]
        .map(|(offset, addr, len)| Extent {
            offset,
            addr: GuestAddress(addr),
            len
        })
    );
    assert_eq!(queue.len(), placement.len());
}

#[test]
fn two_threads_copy_two_files_through_one_queue() {
    let mem = guest_mem(64 * MIB as usize);
    let kernel = pattern(9 * MIB as usize + 4321);
    let initrd: Vec<u8> = pattern(3 * MIB as usize + 7).iter().map(|b| !b).collect();
    let (kf, inf) = (TempFile::new(&kernel), TempFile::new(&initrd));
    let kp = Placement {
        extents: vec![
            Extent {
                offset: 0,
                addr: GuestAddress(MIB + 5),
                len: 5 * MIB,
            },
            Extent {
                offset: 5 * MIB,
                addr: GuestAddress(16 * MIB),
                len: kernel.len() as u64 - 5 * MIB,
            },
        ],
    };
    let ip = Placement::whole(GuestAddress(40 * MIB), initrd.len() as u64);
    let queue = CopyQueue::new(&[(kf.as_file(), &kp), (inf.as_file(), &ip)]);
    std::thread::scope(|s| {
        let helper = s.spawn(|| queue.work(&mem));
        queue.work(&mem).unwrap();
        helper.join().unwrap().unwrap();
    });
    assert_eq!(
        read(&mem, MIB + 5, 5 * MIB as usize),
        kernel[..5 * MIB as usize]
    );
    assert_eq!(
        read(&mem, 16 * MIB, kernel.len() - 5 * MIB as usize),
        kernel[5 * MIB as usize..]
    );
    assert_eq!(read(&mem, 40 * MIB, initrd.len()), initrd);
    // Nothing around them was written.
    assert_eq!(read(&mem, MIB + 4, 1), [0]);
    assert_eq!(read(&mem, 40 * MIB + initrd.len() as u64, 1), [0]);
}

#[test]
fn a_file_that_shrank_since_it_was_placed_fails_its_copy_and_stops_the_queue() {
    let mem = guest_mem(32 * MIB as usize);
    let kernel = TempFile::new(&pattern(MIB as usize));
    let mut initrd = TempFile::new(&pattern(6 * MIB as usize));
    let kernel_image = kernel.as_file();
    let loaded = crate::loader::LoadedKernel {
        format: KernelFormat::Elf,
        entry: crate::loader::EntryPoint::Pvh(GuestAddress(MIB)),
        kernel_end: GuestAddress(2 * MIB),
        setup_header: None,
    };
    let (range, ip) = place_initrd(&mem, initrd.file(), &loaded).unwrap();
    assert_eq!(ip.len(), 6 * MIB);
    initrd.file().set_len(MIB).unwrap();
    let kp = Placement::whole(GuestAddress(MIB), MIB);
    let queue = CopyQueue::new(&[(kernel_image, &kp), (initrd.as_file(), &ip)]);
    let failed = queue.work(&mem).unwrap_err();
    assert_eq!(failed.file, 1);
    assert_eq!(failed.source.kind(), io::ErrorKind::UnexpectedEof);
    // The chunks after the failed one were left, so a second worker finds nothing to do.
    queue.work(&mem).unwrap();
    assert!(read(&mem, range.addr.0 + range.size as u64 - 1, 1) == [0]);
    // A plain copy of the placement says the same.
    let err = ip.copy(&mem, initrd.file()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn overlapping_elf_segments_are_refused() {
    let mem = guest_mem(16 * MIB as usize);
    // The entry segment is 32 bytes at 2 MiB; a second one starting 16 bytes into it.
    let mut f = TempFile::new(&crate::loader::tests::elf_with_segment_at(0x20_0010, 64));
    let err = place_kernel(&mem, f.file()).unwrap_err();
    assert!(
        err.to_string().contains("overlap"),
        "unexpected error: {err}"
    );
}
