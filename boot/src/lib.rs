//! Guest memory layout, kernel loading and the x86_64 boot structures a Linux guest needs.
//!
//! The boot path, in the order a VMM uses it:
//!
//! 1. [`memory::create_guest_memory`]: RAM below the 32-bit MMIO gap, and the rest above 4 GiB.
//! 2. [`loader::load_kernel`] (bzImage or ELF `vmlinux`) and [`loader::load_initrd`].
//! 3. [`params::configure_boot`]: the command line, then either the Linux zero page (64-bit
//!    boot protocol) or the PVH `hvm_start_info`, each with its memory map.
//! 4. [`gdt::write_gdt_and_idt`], [`paging::setup_identity_paging`] (64-bit entry only),
//!    [`mptable::setup_mptable`] so the guest finds its CPUs and its IOAPIC, and
//!    [`acpi::setup_acpi`] for a guest that reads ACPI (its RSDP address goes in the zero page or
//!    the PVH start info).
//!
//! Every guest-physical address used here is in [`layout`]. Nothing in this crate talks to KVM:
//! the VMM turns [`gdt::Segment`] values and the addresses returned here into vCPU registers.
//!
//! Each module has its own error type; [`Error`] gathers them for callers that want a single
//! type.

pub mod acpi;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod params;

/// The kernel command line builder that [`params::configure_boot`] takes.
pub use linux_loader::cmdline::Cmdline;
/// Guest physical address, re-exported from `vm-memory`.
pub use vm_memory::GuestAddress;
/// Guest memory backed by anonymous mmap regions: `vm_memory::GuestMemoryMmap<()>` (no dirty
/// page tracking).
pub use vm_memory::GuestMemoryMmap;

/// Any error from this crate, for callers that want one type. Each variant is transparent: the
/// message is the module error's own, and `source()` continues its chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory could not be laid out or allocated.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Loader(#[from] loader::Error),
    /// The command line, zero page or PVH start info could not be written.
    #[error(transparent)]
    Params(#[from] params::Error),
    /// The boot GDT or IDT could not be written.
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// The identity-mapped page tables could not be written.
    #[error(transparent)]
    Paging(#[from] paging::Error),
    /// The MP table could not be built or written.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the unit tests.

    use std::fs::File;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::{GuestAddress, GuestMemoryMmap};

    /// Flat guest memory of `size` bytes at address 0 (no MMIO gap; tests stay below 3 GiB).
    pub fn guest_mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("mmap guest memory")
    }

    /// A temporary file holding `bytes`, removed on drop.
    pub struct TempFile {
        path: PathBuf,
        file: File,
    }

    impl TempFile {
        pub fn new(bytes: &[u8]) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "boot-crate-test-{}-{}-{}",
                std::process::id(),
                n,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let mut file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .expect("create temp file");
            file.write_all(bytes).expect("write temp file");
            TempFile { path, file }
        }

        pub fn file(&mut self) -> &mut File {
            &mut self.file
        }

        pub fn as_file(&self) -> &File {
            &self.file
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
