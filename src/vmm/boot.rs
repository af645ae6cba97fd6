//! The boot story, in order, in one place: [`Vmm::boot`].
//!
//! 1. Check the user's values and open every file they name (kernel, initrd, disks, TAPs),
//!    before KVM is touched, so a wrong path is reported as such on any host.
//! 2. Map guest memory.
//! 3. Start the vCPU threads: each sets up its vCPU as soon as the VM exists.
//! 4. Place the kernel and the initrd (parse them, decide where they go).
//! 5. Create the KVM VM (memory registered before the irqchip) and send it to the vCPU threads.
//! 6. Create the devices.
//! 7. Write the boot structures: ACPI tables, zero page or PVH start info, MP table, GDT,
//!    page tables.
//! 8. Copy the kernel and the initrd into guest memory: a thread of its own starts on it at
//!    step 5 and the main thread joins in after step 7.
//!
//! The vCPUs run once [`Vmm::run`] lets them go.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use boot::acpi::{self, AcpiConfig};
use boot::loader::copy::{CopyFailed, CopyQueue};
use boot::{layout, loader, memory, mptable, paging, params};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;

use super::devices::{create_devices, Devices};
use super::error::Error;
use super::virtio;
use super::{Built, RunOptions, Vmm};
use crate::config::{VirtioConfig, VmConfig};
use crate::signals::{self, SignalEvent};
use crate::snapshot::state::SavedConfig;
use crate::stop::VmStop;
use crate::vcpus::Vcpus;
use crate::vm::Vm;
use crate::{api, timeline, vcpu};
use kvm_ioctls::Kvm;

// The DSDT's `_S5_` and the sleep register must agree on what "power off" is.
const _: () = assert!(acpi::S5_SLP_TYP == devices::power::S5_SLP_TYP);

impl Vmm {
    /// Builds the VM that `config` describes, ready to run: its vCPUs configured, not yet
    /// running.
    pub fn boot(config: &VmConfig) -> Result<Vmm, Error> {
        // 1. The user's values and files.
        check_config(config)?;
        let jail_paths = match &config.jail {
            Some(jail) => virtio::jail_paths(&config.devices, jail)?,
            None => Vec::new(),
        };
        let Inputs {
            kernel: mut kernel_file,
            initrd: initrd_file,
            devices: mut device_files,
            cmdline,
        } = open_inputs(config)?;
        let kvm = crate::vm::open_kvm(&config.kvm_path)?;
        let signal_evt = install_signal_handlers()?;
        // Everything is open: with --jail, vmm shuts itself in before it maps guest memory or
        // starts a thread.
        if let Some(jail) = &config.jail {
            enter_jail(jail, jail_paths, &mut device_files)?;
        }

        // 2. Guest memory.
        // A vhost-user back end (virtio-fs) maps guest RAM itself: it is then a shared memfd.
        let shared = config
            .devices
            .iter()
            .any(|device| matches!(device, VirtioConfig::Fs(_)));
        let create = if shared {
            memory::create_shared_guest_memory
        } else {
            memory::create_guest_memory
        };
        let mem = create(config.memory_mib << 20, config.thp).map_err(|source| Error::Memory {
            mib: config.memory_mib,
            source: source.into(),
        })?;
        timeline::mark("memory mapped");

        // 3. The vCPU threads. check_config made sure the count fits the MP table's u8.
        let cpus = config.cpus as u8;
        let (stop, filters, mut vcpus) = spawn_vcpus(&mem, cpus, config.seccomp)?;
        timeline::mark("vCPU threads started");

        // 4. The kernel and the initrd, placed.
        let (kernel, kernel_bytes) =
            loader::place_kernel(&mem, &mut kernel_file).map_err(|source| Error::LoadKernel {
                path: config.kernel.clone(),
                source: source.into(),
            })?;
        let initrd = match (initrd_file, &config.initrd) {
            (Some(mut file), Some(path)) => {
                let (range, bytes) =
                    loader::place_initrd(&mem, &mut file, &kernel).map_err(|source| {
                        Error::LoadInitrd {
                            path: path.clone(),
                            source: source.into(),
                        }
                    })?;
                Some((file, range, bytes))
            }
            _ => None,
        };
        timeline::mark("kernel and initrd placed");
        let saved_config = SavedConfig {
            memory_mib: config.memory_mib,
            cpus,
            devices: device_files.iter().map(virtio::Opened::config).collect(),
        };

        // 5-8. Copying the kernel and the initrd is most of the loading (the host faults in
        // and zeroes every page first): a thread of its own starts on it while this one
        // creates the VM and the devices and writes the boot structures, then this one helps.
        let mut copies = vec![(&kernel_file, &kernel_bytes)];
        copies.extend(initrd.as_ref().map(|(file, _, bytes)| (file, bytes)));
        let copies = CopyQueue::new(&copies);
        let (vm, devices) = copy_alongside(config, &mem, &copies, || {
            // 5. The VM, sent to the vCPU threads.
            let vm = Arc::new(create_vm(kvm, &mem, config.cpus)?);
            vcpus.setup(&vm, kernel.entry);
            // 6. The devices.
            let devices = create_devices(&vm, &mem, &stop, device_files)?;
            // 7. The boot structures.
            let initrd = initrd.as_ref().map(|(_, range, _)| range);
            write_boot_structures(config, &mem, cpus, &kernel, initrd, cmdline, &devices)?;
            Ok((vm, devices))
        })?;
        timeline::mark("kernel and initrd copied");
        let built = Built {
            vcpus,
            devices,
            vm,
            mem,
            stop,
            filters,
            signal_evt,
        };
        let options = RunOptions {
            api_socket: config.api_socket.clone(),
            exit_stats: config.exit_stats,
            paused: false,
        };
        Ok(Vmm::assemble(built, saved_config, options, None))
    }
}

/// Runs `work` on this thread while a helper thread copies `copies` into guest memory (when
/// there is enough to copy), then helps finish the copy (8.). A failed `work` cancels the copy.
fn copy_alongside<T>(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    copies: &CopyQueue,
    work: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        let helper = (copies.len() >= PARALLEL_COPY_MIN).then(|| scope.spawn(|| copies.work(mem)));
        let built = work();
        if built.is_err() {
            copies.cancel();
        }
        let mine = copies.work(mem);
        let theirs = helper.map_or(Ok(()), |helper| {
            helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let built = built?;
        mine.and(theirs)
            .map_err(|failed| copy_error(config, failed))?;
        Ok(built)
    })
}

/// Writes what the kernel reads at its entry: the command line (with each virtio device on
/// it, for kernels without ACPI), the ACPI tables (the devices in the DSDT), the zero page or
/// PVH start info, the MP table, the GDT and the page tables. None of this touches the bytes
/// of the kernel or the initrd, which may still be on their way.
fn write_boot_structures(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    cpus: u8,
    kernel: &loader::LoadedKernel,
    initrd: Option<&loader::InitrdRange>,
    mut cmdline: Cmdline,
    devices: &Devices,
) -> Result<(), Error> {
    // Kernels without ACPI find the virtio devices on the command line, the others in the
    // DSDT (for one with both, the second registration of a window fails harmlessly).
    for slot in &devices.virtio_slots {
        cmdline
            .insert_str(slot.cmdline_entry())
            .map_err(Error::Cmdline)?;
    }
    let acpi = AcpiConfig {
        cpus,
        virtio_mmio: devices
            .virtio_slots
            .iter()
            .map(|slot| (slot.addr, slot.size, slot.irq))
            .collect(),
    };
    let boot_err = |e: boot::Error| Error::BootStructures(e);
    let rsdp = acpi::setup_acpi(mem, &acpi).map_err(|e| boot_err(e.into()))?;
    params::configure_boot(
        mem,
        kernel,
        &cmdline,
        initrd,
        config.memory_mib << 20,
        Some(rsdp),
    )
    .map_err(|e| boot_err(e.into()))?;
    mptable::setup_mptable(mem, cpus).map_err(|e| boot_err(e.into()))?;
    boot::gdt::write_gdt_and_idt(mem).map_err(|e| boot_err(e.into()))?;
    paging::setup_identity_paging(mem).map_err(|e| boot_err(e.into()))?;
    timeline::mark("devices and boot structures ready");
    Ok(())
}

/// The host's RAM in MiB (sysinfo).
fn host_ram_mib() -> u64 {
    let info = rustix::system::sysinfo();
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) >> 20
}

fn open(path: &Path) -> io::Result<File> {
    crate::disk::open_regular(std::fs::OpenOptions::new().read(true), path)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
}

/// Checks the user's values that need no KVM: CPU count, memory size against the host.
fn check_config(config: &VmConfig) -> Result<(), Error> {
    if let Some(jail) = &config.jail {
        crate::jail::check(jail)?;
    }
    if config.cpus > u16::from(mptable::MAX_SUPPORTED_CPUS) {
        return Err(Error::TooManyCpusForMpTable {
            requested: config.cpus,
            max: mptable::MAX_SUPPORTED_CPUS,
        });
    }
    let host_mib = host_ram_mib();
    if config.memory_mib > host_mib {
        return Err(Error::MemoryTooLarge {
            mib: config.memory_mib,
            host_mib,
        });
    }
    // Below the host's RAM, so the size in bytes fits a u64.
    memory::check_mem_size(config.memory_mib << 20).map_err(|source| Error::MemoryTooSmall {
        mib: config.memory_mib,
        source,
    })?;
    // The socket is created only once the vCPUs run; a path that cannot work fails now
    // (a jailed vmm's is inside the jail, checked when it is made).
    if let Some(path) = config.api_socket.as_ref().filter(|_| config.jail.is_none()) {
        api::socket::check_path("--api-socket", path)?;
    }
    Ok(())
}

/// Opens the kernel and initrd and checks the kernel's format, before KVM is touched, so
/// that a wrong path is reported as such on any host.
fn open_inputs(config: &VmConfig) -> Result<Inputs, Error> {
    let mut kernel = open(&config.kernel).map_err(|source| Error::OpenKernel {
        path: config.kernel.clone(),
        source,
    })?;
    loader::detect_format(&mut kernel).map_err(|source| Error::LoadKernel {
        path: config.kernel.clone(),
        source: source.into(),
    })?;
    let initrd = match &config.initrd {
        Some(path) => Some(open(path).map_err(|source| Error::OpenInitrd {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let devices = virtio::open(&config.devices, false)?;
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(Error::Cmdline)?;
    if config.root_disk {
        let mode = match config.devices.first() {
            Some(VirtioConfig::Block(disk)) if disk.read_only => "ro",
            _ => "rw",
        };
        cmdline
            .insert_str(format!("root=/dev/vda {mode}"))
            .map_err(Error::Cmdline)?;
    }
    Ok(Inputs {
        kernel,
        initrd,
        devices,
        cmdline,
    })
}

/// The user's files, opened and checked, and the command line so far.
struct Inputs {
    kernel: File,
    initrd: Option<File>,
    devices: Vec<virtio::Opened>,
    cmdline: Cmdline,
}

/// Below this many bytes to copy, the kernel and initrd are copied on the main thread alone
/// (a tiny test guest's few KiB): starting a thread would cost more than it saves.
const PARALLEL_COPY_MIN: u64 = 2 * loader::copy::CHUNK;

/// The error for a failed copy of the kernel (file 0) or the initrd (file 1).
fn copy_error(config: &VmConfig, failed: CopyFailed) -> Error {
    match (failed.file, &config.initrd) {
        (1, Some(path)) => Error::LoadInitrd {
            path: path.clone(),
            source: loader::Error::ReadInitrd(failed.source).into(),
        },
        _ => Error::LoadKernel {
            path: config.kernel.clone(),
            source: loader::Error::ReadKernel(failed.source).into(),
        },
    }
}

/// SIGINT/SIGTERM (as an event the event loop watches) and the vCPU kick, before any vCPU
/// thread starts.
pub(super) fn install_signal_handlers() -> Result<SignalEvent, Error> {
    let signal_evt = signals::install().map_err(|source| Error::Io {
        what: "signal handling",
        source,
    })?;
    vcpu::register_kick_handler().map_err(|source| Error::Io {
        what: "the vCPU kick signal",
        source,
    })?;
    Ok(signal_evt)
}

/// The VM's stop event, the seccomp filters (None: `--no-seccomp`) and the vCPU threads.
pub(super) type Spawned = (Arc<VmStop>, Option<Arc<crate::seccomp::Filters>>, Vcpus);

/// The VM's stop event, the seccomp filters (None without `seccomp`) and one thread per vCPU,
/// started before the VM exists.
pub(super) fn spawn_vcpus(
    mem: &GuestMemoryMmap,
    cpus: u8,
    seccomp: bool,
) -> Result<Spawned, Error> {
    let stop = Arc::new(VmStop::new().map_err(|source| Error::Io {
        what: "the VM's stop event",
        source,
    })?);
    let filters = seccomp_filters(seccomp)?;
    let vcpus = Vcpus::spawn(mem, &stop, cpus, filters.clone()).map_err(|source| Error::Io {
        what: "a vCPU thread",
        source,
    })?;
    Ok((stop, filters, vcpus))
}

/// Opens KVM and creates the VM with `mem` as its RAM, checking that it can have `cpus` vCPUs.
pub(super) fn create_vm(kvm: Kvm, mem: &GuestMemoryMmap, cpus: u16) -> Result<Vm, Error> {
    let vm = Vm::new(kvm, mem)?;
    if usize::from(cpus) > vm.max_vcpus {
        return Err(Error::TooManyCpus {
            requested: cpus,
            max: vm.max_vcpus,
        });
    }
    Ok(vm)
}

/// `--jail`: shuts vmm in (everything it was given is open by now) and tells the devices
/// where their sockets are from inside (`paths`, from [`virtio::jail_paths`]).
pub(super) fn enter_jail(
    jail: &crate::jail::JailConfig,
    paths: Vec<std::path::PathBuf>,
    devices: &mut [virtio::Opened],
) -> Result<(), Error> {
    let entered = crate::jail::enter(jail)?;
    virtio::move_into_jail(devices, paths);
    timeline::mark("jailed");
    log::info!(
        "jailed in {} as {}:{} ({}, Landlock {})",
        jail.dir.display(),
        jail.uid,
        jail.gid,
        if entered.pivoted {
            "pivot_root"
        } else {
            "chroot"
        },
        if entered.landlocked {
            "on"
        } else {
            "not available"
        }
    );
    Ok(())
}

/// The seccomp filters, built (a few tens of microseconds), with the SIGSYS handler in place;
/// None without seccomp.
fn seccomp_filters(on: bool) -> Result<Option<Arc<crate::seccomp::Filters>>, Error> {
    if !on {
        return Ok(None);
    }
    crate::seccomp::register_handler()?;
    let filters = Arc::new(crate::seccomp::Filters::new(vcpu::kick_signal())?);
    timeline::mark("seccomp filters built");
    Ok(Some(filters))
}
