//! Runs a VM to its end, in the order of the boot story: check the inputs → VM → memory →
//! kernel and initrd → devices → boot structures → vCPUs → the event loop, until the guest or
//! the user stops it → stop the vCPUs.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boot::acpi::{self, AcpiConfig};
use boot::loader::copy::{CopyFailed, CopyQueue};
use boot::{layout, loader, memory, mptable, paging, params};
use devices::power::GuestExitCode;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;

use crate::api;
use crate::config::{DiskConfig, NetConfig, VmConfig};
use crate::exit::{ExitReason, VmExit};
use crate::exit_stats::ExitStats;
use crate::signals::SignalEvent;
use crate::snapshot::state::SavedConfig;
use crate::vcpu;
use crate::vm::{self, Vm};
use crate::{event_loop, signals, snapshot, timeline, vcpus};
use platform::{create_devices, Devices};

mod platform;
mod restore;

pub use restore::restore_vm;

// The DSDT's `_S5_` and the sleep register must agree on what "power off" is.
const _: () = assert!(acpi::S5_SLP_TYP == devices::power::S5_SLP_TYP);

/// Errors while building or running a VM. `exit_code()` tells usage errors (2) from runtime
/// errors (1).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--cpus {requested} is more than this host's KVM allows ({max})")]
    TooManyCpus { requested: u16, max: usize },
    #[error(
        "--cpus {requested} is more than the VMM supports ({max}: the MP table's 8-bit APIC ids)"
    )]
    TooManyCpusForMpTable { requested: u16, max: u8 },
    #[error("--memory {mib} MiB is more than this host has ({host_mib} MiB of RAM)")]
    MemoryTooLarge { mib: u64, host_mib: u64 },
    #[error("--memory {mib} MiB is too small")]
    MemoryTooSmall {
        mib: u64,
        #[source]
        source: memory::Error,
    },
    #[error("cannot open the kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the kernel {path}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: boot::Error,
    },
    #[error("cannot open the initrd {path}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the initrd {path}")]
    LoadInitrd {
        path: PathBuf,
        #[source]
        source: boot::Error,
    },
    #[error("cannot use the disk image {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: crate::disk::Error,
    },
    #[error("cannot attach the disk image {path}")]
    Block {
        path: PathBuf,
        #[source]
        source: devices::virtio::block::BlockError,
    },
    #[error("cannot use the TAP device {name} for --net")]
    Tap {
        name: String,
        #[source]
        source: devices::virtio::net::TapError,
    },
    #[error("cannot attach a virtio device")]
    Virtio(#[source] crate::device_manager::Error),
    #[error("the kernel command line is invalid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot create {mib} MiB of guest memory")]
    Memory {
        mib: u64,
        #[source]
        source: boot::Error,
    },
    #[error("cannot write the boot structures into guest memory")]
    BootStructures(#[source] boot::Error),
    #[error(transparent)]
    Vm(#[from] vm::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot set up {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach {what} to the I/O bus")]
    Bus {
        what: &'static str,
        #[source]
        source: devices::BusError,
    },
    #[error("cannot connect the {what} interrupt (KVM irqfd for GSI {gsi})")]
    Irqfd {
        what: &'static str,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    ApiSocket(#[from] api::SocketError),
    #[error("cannot restore the snapshot")]
    Snapshot(#[from] snapshot::LoadError),
    #[error("cannot restore {what} from the snapshot: {message}")]
    Restore { what: &'static str, message: String },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
}

impl Error {
    /// 2 when the command line asks for something impossible (a value beyond the host's
    /// limits, a file that is not usable as asked), 1 when the VM fails at runtime.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::TooManyCpus { .. }
            | Error::TooManyCpusForMpTable { .. }
            | Error::MemoryTooLarge { .. }
            | Error::MemoryTooSmall { .. }
            | Error::OpenKernel { .. }
            | Error::LoadKernel { .. }
            | Error::OpenInitrd { .. }
            | Error::LoadInitrd { .. }
            | Error::Disk { .. }
            | Error::Block { .. }
            | Error::Tap { .. }
            | Error::ApiSocket(_)
            | Error::Snapshot(_)
            | Error::Restore { .. }
            | Error::Vcpu(vcpu::Error::Restore { .. })
            | Error::Cmdline(_) => 2,
            _ => 1,
        }
    }
}

/// The host's RAM in MiB (sysinfo).
fn host_ram_mib() -> u64 {
    let info = rustix::system::sysinfo();
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) >> 20
}

fn open(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Checks the user's values that need no KVM: CPU count, memory size against the host.
fn check_config(config: &VmConfig) -> Result<(), Error> {
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
    // The socket is created only once the vCPUs run; a path that cannot work fails now.
    if let Some(path) = &config.api_socket {
        api::socket::check_path(path)?;
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
    let (disks, taps) = open_disks_and_taps(&config.disks, &config.nets)?;
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cmdline
        .insert_str(&config.cmdline)
        .map_err(Error::Cmdline)?;
    if config.root_disk {
        let mode = match config.disks.first() {
            Some(d) if d.read_only => "ro",
            _ => "rw",
        };
        cmdline
            .insert_str(format!("root=/dev/vda {mode}"))
            .map_err(Error::Cmdline)?;
    }
    Ok(Inputs {
        kernel,
        initrd,
        disks,
        taps,
        cmdline,
    })
}

/// The disk images, opened, with what they were opened as.
type OpenDisks = Vec<(DiskConfig, File)>;
/// The TAP devices, opened, each with its interface's configuration (MAC decided).
type OpenTaps = Vec<(NetConfig, devices::virtio::net::Tap)>;

/// Opens the disk images (locked as they are shared or not) and the TAP devices, in order;
/// each network interface gets its MAC now (given, or derived from the TAP's name).
fn open_disks_and_taps(
    disk_configs: &[DiskConfig],
    net_configs: &[NetConfig],
) -> Result<(OpenDisks, OpenTaps), Error> {
    let mut disks = Vec::with_capacity(disk_configs.len());
    for disk in disk_configs {
        let file =
            crate::disk::open_disk(&disk.path, disk.read_only).map_err(|source| Error::Disk {
                path: disk.path.clone(),
                source,
            })?;
        disks.push((disk.clone(), file));
    }
    let mut taps = Vec::with_capacity(net_configs.len());
    for net in net_configs {
        let tap = devices::virtio::net::Tap::open(&net.tap).map_err(|source| Error::Tap {
            name: net.tap.clone(),
            source,
        })?;
        let mac = net
            .mac
            .unwrap_or_else(|| devices::virtio::net::generated_mac(tap.name()));
        let net = NetConfig {
            tap: net.tap.clone(),
            mac: Some(mac),
        };
        taps.push((net, tap));
    }
    if disks.len() + taps.len() > crate::device_manager::MAX_VIRTIO_DEVICES {
        return Err(Error::Virtio(crate::device_manager::Error::TooManyDevices));
    }
    Ok((disks, taps))
}

/// The user's files, opened and checked, and the command line so far.
struct Inputs {
    kernel: File,
    initrd: Option<File>,
    disks: OpenDisks,
    taps: OpenTaps,
    cmdline: Cmdline,
}

/// Builds the VM described by `config`, runs it to the end, and says why it ended and which
/// exit code the guest chose, if it chose one.
pub fn run_vm(config: &VmConfig) -> Result<(ExitReason, Option<u8>), Error> {
    check_config(config)?;
    let Inputs {
        kernel: mut kernel_file,
        initrd: initrd_file,
        disks,
        taps,
        cmdline,
    } = open_inputs(config)?;
    let signal_evt = install_signal_handlers()?;

    let mem_size = config.memory_mib << 20;
    let mem =
        memory::create_guest_memory(mem_size, config.thp).map_err(|source| Error::Memory {
            mib: config.memory_mib,
            source: source.into(),
        })?;
    timeline::mark("memory mapped");
    // check_config made sure the count fits the MP table's u8.
    let cpus = config.cpus as u8;
    // Starting a thread takes a few hundred microseconds here: the vCPU threads start first,
    // and each sets up its vCPU as soon as the VM exists (the kernel is placed before it, so
    // its entry point is known by then), while this thread builds the devices and the boot
    // structures.
    let (exit, filters, vcpu_threads) = spawn_vcpus(&mem, cpus, config.seccomp)?;
    timeline::mark("vCPU threads started");
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
        disks: disks.iter().map(|(disk, _)| disk.clone()).collect(),
        nets: taps.iter().map(|(net, _)| net.clone()).collect(),
    };

    // Copying the kernel and the initrd is most of the loading (the host faults in and
    // zeroes every page first): a thread of its own starts on it while this one creates the
    // VM and the devices and writes the boot structures, then this one helps.
    let mut copies = vec![(&kernel_file, &kernel_bytes)];
    copies.extend(initrd.as_ref().map(|(file, _, bytes)| (file, bytes)));
    let copies = CopyQueue::new(&copies);
    let (vm, devices) = std::thread::scope(|scope| {
        let helper = (copies.len() >= PARALLEL_COPY_MIN).then(|| scope.spawn(|| copies.work(&mem)));
        let boot = Boot {
            kernel: &kernel,
            initrd: initrd.as_ref().map(|(_, range, _)| range),
            cmdline,
        };
        let built = build_vm(config, &mem, cpus, boot, disks, taps, &vcpu_threads);
        if built.is_err() {
            copies.cancel();
        }
        let mine = copies.work(&mem);
        let theirs = helper.map_or(Ok(()), |helper| {
            helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let built = built?;
        mine.and(theirs)
            .map_err(|failed| copy_error(config, failed))?;
        Ok::<_, Error>(built)
    })?;
    timeline::mark("kernel and initrd copied");
    run(Machine {
        vm,
        mem,
        exit,
        signal_evt,
        vcpu_threads,
        devices,
        config: saved_config,
        api_socket: config.api_socket.clone(),
        exit_stats: config.exit_stats,
        paused: false,
        filters,
        saved_vm: None,
    })
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

/// What the guest boots: the kernel and the initrd as placed, and its command line so far.
struct Boot<'a> {
    kernel: &'a loader::LoadedKernel,
    initrd: Option<&'a loader::InitrdRange>,
    cmdline: Cmdline,
}

/// Creates the VM with `mem` as its RAM, has the vCPU threads set up their vCPUs, creates the
/// devices, and writes the boot structures (the kernel and initrd are placed, not necessarily
/// copied yet: none of this touches their bytes).
fn build_vm(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    cpus: u8,
    boot: Boot,
    disks: OpenDisks,
    taps: OpenTaps,
    vcpu_threads: &vcpus::VcpuThreads,
) -> Result<(Arc<Vm>, Devices), Error> {
    let Boot {
        kernel,
        initrd,
        mut cmdline,
    } = boot;
    let vm = Arc::new(create_vm(&config.kvm_path, mem, config.cpus)?);
    vcpu_threads.setup(&vm, kernel.entry);
    let devices = create_devices(&vm, mem, disks, taps)?;
    // Kernels without ACPI find the virtio devices on the command line, the others in the
    // DSDT (for one with both, the second registration of a window fails harmlessly).
    let virtio_slots = &devices.virtio_slots;
    for slot in virtio_slots {
        cmdline
            .insert_str(slot.cmdline_entry())
            .map_err(Error::Cmdline)?;
    }
    let acpi = AcpiConfig {
        cpus,
        virtio_mmio: virtio_slots
            .iter()
            .map(|slot| (slot.addr, slot.size, slot.irq))
            .collect(),
    };
    let rsdp = acpi::setup_acpi(mem, &acpi).map_err(|e| Error::BootStructures(e.into()))?;

    params::configure_boot(
        mem,
        kernel,
        &cmdline,
        initrd,
        config.memory_mib << 20,
        Some(rsdp),
    )
    .map_err(|e| Error::BootStructures(e.into()))?;
    mptable::setup_mptable(mem, cpus).map_err(|e| Error::BootStructures(e.into()))?;
    boot::gdt::write_gdt_and_idt(mem).map_err(|e| Error::BootStructures(e.into()))?;
    paging::setup_identity_paging(mem).map_err(|e| Error::BootStructures(e.into()))?;
    timeline::mark("devices and boot structures ready");
    Ok((vm, devices))
}

/// SIGINT/SIGTERM (as an event the event loop watches) and the vCPU kick, before any vCPU
/// thread starts.
fn install_signal_handlers() -> Result<SignalEvent, Error> {
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

/// The VM's exit event, the seccomp filters (None without seccomp) and the vCPU threads.
type Spawned = (
    Arc<VmExit>,
    Option<Arc<crate::seccomp::Filters>>,
    vcpus::VcpuThreads,
);

/// The VM's exit event, the seccomp filters (with `seccomp`) and one thread per vCPU, started
/// before the VM exists.
fn spawn_vcpus(mem: &GuestMemoryMmap, cpus: u8, seccomp: bool) -> Result<Spawned, Error> {
    let exit = Arc::new(VmExit::new().map_err(|source| Error::Io {
        what: "the VM exit event",
        source,
    })?);
    let filters = seccomp_filters(seccomp)?;
    let threads = vcpus::spawn(mem, &exit, cpus, filters.clone()).map_err(|source| Error::Io {
        what: "a vCPU thread",
        source,
    })?;
    Ok((exit, filters, threads))
}

/// Opens KVM and creates the VM with `mem` as its RAM, checking that it can have `cpus` vCPUs.
fn create_vm(kvm_path: &Path, mem: &GuestMemoryMmap, cpus: u16) -> Result<Vm, Error> {
    let vm = Vm::new(kvm_path, mem)?;
    if usize::from(cpus) > vm.max_vcpus {
        return Err(Error::TooManyCpus {
            requested: cpus,
            max: vm.max_vcpus,
        });
    }
    Ok(vm)
}

/// The seccomp filters, built (a few tens of microseconds), with the SIGSYS handler in place;
/// None without seccomp.
fn seccomp_filters(on: bool) -> Result<Option<Arc<crate::seccomp::Filters>>, Error> {
    if !on {
        return Ok(None);
    }
    crate::seccomp::register_handler()?;
    let filters = Arc::new(crate::seccomp::Filters::new()?);
    timeline::mark("seccomp filters built");
    Ok(Some(filters))
}

/// A VM built (booted or restored), its vCPUs configured but not yet running.
struct Machine {
    vm: Arc<Vm>,
    mem: GuestMemoryMmap,
    exit: Arc<VmExit>,
    signal_evt: SignalEvent,
    vcpu_threads: vcpus::VcpuThreads,
    devices: Devices,
    config: SavedConfig,
    api_socket: Option<PathBuf>,
    exit_stats: bool,
    /// Start with the vCPUs parked (`--restore-paused`).
    paused: bool,
    /// The seccomp filters (None: `--no-seccomp`); the vCPU threads have theirs already.
    filters: Option<Arc<crate::seccomp::Filters>>,
    /// A restored VM's saved state, whose clock is set once the vCPUs are configured.
    saved_vm: Option<snapshot::state::KvmVmState>,
}

/// Runs the event loop and the vCPUs until the VM stops, then stops the vCPUs; says why the
/// VM ended and which exit code the guest chose, if it chose one.
fn run(machine: Machine) -> Result<(ExitReason, Option<u8>), Error> {
    let Machine {
        vm,
        mem,
        exit,
        signal_evt,
        vcpu_threads,
        devices,
        config,
        api_socket,
        exit_stats,
        paused,
        filters,
        saved_vm,
    } = machine;
    let Devices {
        io,
        serial,
        guest_stops,
        guest_code,
        queue_handlers,
        virtio_slots: _,
        transports,
        device_infos,
    } = devices;
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(Error::EventLoop)?;
    manager.add_subscriber(Arc::new(Mutex::new(event_loop::ExitWatcher::new(
        exit.clone(),
        signal_evt,
        guest_stops,
    ))));
    manager.add_subscriber(Arc::new(Mutex::new(event_loop::StdinInput::new(
        serial.clone(),
    ))));
    for handler in queue_handlers {
        manager.add_subscriber(Arc::new(Mutex::new(handler)));
    }

    let _raw_mode = crate::terminal::RawModeGuard::new().map_err(|source| Error::Io {
        what: "the terminal (raw mode)",
        source,
    })?;
    let cpus = config.cpus;
    let stats = Arc::new(ExitStats::new(
        usize::from(cpus),
        io.pio.names(),
        io.mmio.names(),
    ));
    let mut vcpu_threads = vcpu_threads;
    let configured_at = vcpu_threads.wait_configured()?;
    if let Some(saved) = &saved_vm {
        snapshot::state::restore_clock(&vm.fd, saved, configured_at).map_err(|message| {
            Error::Restore {
                what: "the VM's clock",
                message,
            }
        })?;
    }
    // What is already waiting (input typed before the start, a restored device's queue
    // notifications) is handled before the guest runs, not after the event loop's first
    // wake-up, which can come milliseconds after the vCPUs start.
    manager.run_with_timeout(0).map_err(Error::EventLoop)?;
    let vcpus = vcpus::start(vcpu_threads, &io, &stats, paused)?;
    // The API comes up only now, off the path to the first vCPU entry. The socket file is
    // removed when this guard drops, however run ends.
    let _api_socket_file = match &api_socket {
        None => None,
        Some(path) => {
            let ctx = api::Context {
                exit: exit.clone(),
                control: vcpus.control(),
                stats: stats.clone(),
                vcpus: cpus,
                memory_mib: config.memory_mib,
                devices: device_infos,
                started: std::time::Instant::now(),
                snapshot: Some(snapshot::Source {
                    vm: vm.clone(),
                    mem: mem.clone(),
                    control: vcpus.control(),
                    config,
                    serial,
                    transports,
                    guest_code: guest_code.clone(),
                }),
            };
            let server =
                api::socket::bind(path)
                    .map_err(Error::from)
                    .and_then(|(listener, file)| {
                        let server =
                            api::ApiServer::new(listener, ctx).map_err(|source| Error::Io {
                                what: "the API server",
                                source,
                            })?;
                        Ok((server, file))
                    });
            match server {
                Ok((server, file)) => {
                    manager.add_subscriber(Arc::new(Mutex::new(server)));
                    timeline::mark("API socket listening");
                    Some(file)
                }
                Err(e) => {
                    exit.request(ExitReason::Error(e.to_string()));
                    vcpus::stop(vcpus);
                    return Err(e);
                }
            }
        }
    };

    // A SIGINT/SIGTERM held since main started is delivered now, to this thread only.
    if let Err(source) = crate::signals::release() {
        exit.request(ExitReason::Error(source.to_string()));
        vcpus::stop(vcpus);
        return Err(Error::Io {
            what: "signal handling",
            source,
        });
    }
    if let Some(filters) = &filters {
        if let Err(e) = filters.install(crate::seccomp::ThreadKind::Main, "vmm") {
            exit.request(ExitReason::Error(e.to_string()));
            vcpus::stop(vcpus);
            return Err(e.into());
        }
        timeline::mark("seccomp filter installed on the main thread");
    }
    while !exit.stopping() {
        manager.run().map_err(Error::EventLoop)?;
    }
    vcpus::stop(vcpus);
    timeline::mark("guest exit");
    if exit_stats {
        eprint!("{}", stats.snapshot().table());
    }
    log::info!(
        "accesses to no device: {} port I/O (read as 0xff), {} MMIO",
        io.pio.unhandled_accesses(),
        io.mmio.unhandled_accesses()
    );
    // The API (and its handles to the VM) go before guest memory; guest memory is dropped
    // only now, after every vCPU thread has ended.
    drop(manager);
    drop(mem);
    let reason = exit
        .reason()
        .unwrap_or_else(|| ExitReason::Error("the VM stopped for no recorded reason".into()));
    Ok((reason, GuestExitCode::read(&guest_code)))
}
