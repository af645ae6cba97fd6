//! The kernel loader on arbitrary bytes: format detection, then the bzImage loader (setup
//! header, `init_size`, the protected-mode kernel) or the ELF loader (program headers, the PVH
//! note), into 16 MiB of guest memory. What it reports must lie in that memory.
#![no_main]

use std::io::Write;
use std::sync::{LazyLock, Mutex};

use boot::loader::{load_kernel, EntryPoint};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_fuzz::{empty_memfd, guarded_memory};

const RAM: u64 = 16 << 20;
static MEM: LazyLock<GuestMemoryMmap> = LazyLock::new(|| guarded_memory(&[(0, RAM as usize)]));
static FILE: LazyLock<Mutex<std::fs::File>> = LazyLock::new(|| Mutex::new(empty_memfd("kernel")));

fuzz_target!(|data: &[u8]| {
    let mut file = FILE.lock().unwrap();
    file.set_len(0).unwrap();
    std::io::Seek::rewind(&mut *file).unwrap();
    file.write_all(data).unwrap();
    if let Ok(kernel) = load_kernel(&MEM, &mut file) {
        assert!(kernel.kernel_end.0 <= RAM, "{kernel:?} ends past RAM");
        let entry = match kernel.entry {
            EntryPoint::Long64(a) | EntryPoint::Pvh(a) => a.0,
        };
        assert!(entry < RAM, "{kernel:?} enters outside RAM");
    }
});
