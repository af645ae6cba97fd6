//! Starting a VM from a snapshot ([`Vmm::restore`]), in the order of the boot story with the
//! saved state in place of the kernel: read and check the snapshot → open its disks and TAPs →
//! map its memory file → vCPU threads → VM, with the saved interrupt controllers and PIT →
//! vCPUs with their saved registers → devices with their saved registers and queues. The clock
//! is set once the vCPUs have their TSCs, in [`Vmm::run`].
//!
//! Everything is checked before any vCPU runs: a snapshot that cannot start here (another
//! format version, a corrupt file, a CPU feature this host lacks, a missing disk) is an error
//! with exit code 2, never a half-started guest.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use boot::{memory, mptable};
use devices::Persist;

use super::boot::{create_vm, enter_jail, install_signal_handlers, spawn_vcpus};
use super::devices::create_devices;
use super::error::Error;
use super::virtio;
use super::{lock, Built, RunOptions, Vmm};
use crate::config::{RestoreConfig, VirtioConfig};
use crate::snapshot::state::SnapshotState;
use crate::snapshot::{self, Snapshot};
use crate::{api, cpuid, timeline, vcpu};

impl Vmm {
    /// Builds the VM saved in `config.dir`, ready to run where it was paused.
    pub fn restore(config: &RestoreConfig) -> Result<Vmm, Error> {
        if let Some(jail) = &config.jail {
            crate::jail::check(jail)?;
        }
        // A jailed vmm's socket is inside the jail, checked when it is made.
        if let Some(path) = config.api_socket.as_ref().filter(|_| config.jail.is_none()) {
            api::socket::check_path("--api-socket", path)?;
        }
        let Snapshot { state, memory } = snapshot::load(&config.dir)?;
        timeline::mark("snapshot read and checked");
        let SnapshotState {
            config: mut saved,
            vm: vm_state,
            vcpus: vcpu_states,
            serial: serial_state,
            virtio: virtio_states,
            guest_exit_code,
            disks: saved_disks,
        } = state;
        if saved.cpus > mptable::MAX_SUPPORTED_CPUS {
            return Err(Error::TooManyCpusForMpTable {
                requested: u16::from(saved.cpus),
                max: mptable::MAX_SUPPORTED_CPUS,
            });
        }
        if let Some((cid, uds)) = &config.vsock {
            let vsock = saved
                .devices
                .iter_mut()
                .find_map(|device| match device {
                    VirtioConfig::Vsock(vsock) => Some(vsock),
                    _ => None,
                })
                .ok_or(Error::NoVsockInSnapshot)?;
            if let Some(given) = *cid {
                if given != vsock.cid {
                    return Err(Error::VsockCid {
                        given,
                        saved: vsock.cid,
                    });
                }
            }
            vsock.uds = uds.clone();
        }
        override_disks_and_taps(&mut saved.devices, config)?;
        let jail_paths = match &config.jail {
            Some(jail) => virtio::jail_paths(&saved.devices, jail)?,
            None => Vec::new(),
        };
        let mut device_files = virtio::open(&saved.devices, true)?;
        virtio::check_disks(&device_files, &saved_disks, !config.disks.is_empty())?;
        let kvm = crate::vm::open_kvm(&config.kvm_path)?;
        // Everything is open: with --jail, vmm shuts itself in before it maps guest memory or
        // starts a thread.
        if let Some(jail) = &config.jail {
            enter_jail(jail, jail_paths, &mut device_files)?;
        }
        let signal_evt = install_signal_handlers()?;

        let mem =
            memory::map_guest_memory_file(saved.memory_mib << 20, &memory).map_err(|source| {
                Error::Memory {
                    mib: saved.memory_mib,
                    source: source.into(),
                }
            })?;
        timeline::mark("memory mapped from the snapshot");
        let cpus = saved.cpus;
        let (stop, filters, mut vcpus) = spawn_vcpus(&mem, cpus, config.seccomp)?;

        let mut vm = create_vm(kvm, &mem, u16::from(cpus))?;
        for (index, vcpu) in (0..cpus).zip(&vcpu_states) {
            let here = cpuid::normalize(&vm.supported_cpuid, index, cpus);
            vcpu::state::check_cpuid(&vcpu.cpuid, here.as_slice())
                .map_err(|source| Error::RestoreCpu { index, source })?;
        }
        vm.restore(&vm_state).map_err(Error::RestoreVm)?;
        let vm = Arc::new(vm);
        vcpus.restore(&vm, vcpu_states);

        let devices = create_devices(&vm, &mem, &stop, device_files)?;
        lock(&devices.serial)
            .restore(&serial_state)
            .map_err(Error::RestoreSerial)?;
        for (index, (transport, state)) in devices.transports.iter().zip(&virtio_states).enumerate()
        {
            lock(transport)
                .restore(state)
                .map_err(|source| Error::RestoreVirtio { index, source })?;
        }
        if let Some(code) = guest_exit_code {
            devices.guest_code.store(u16::from(code), Ordering::SeqCst);
        }
        timeline::mark("devices restored");
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
            paused: config.paused,
        };
        Ok(Vmm::assemble(built, saved, options, Some(vm_state)))
    }
}

/// `--drive` and `--net` with `--restore`: each clone of a snapshot gets its own images and
/// TAPs. Given, they replace the snapshot's in order, all of them: a disk keeps its mode and
/// serial (the guest negotiated and read them) and must be as large as the snapshot's (checked
/// once it is open); an interface keeps the MAC the guest saw.
fn override_disks_and_taps(
    devices: &mut [VirtioConfig],
    config: &RestoreConfig,
) -> Result<(), Error> {
    let mismatch = |what: String| Error::RestoreOverride(what);
    if !config.disks.is_empty() {
        let mut saved: Vec<_> = devices
            .iter_mut()
            .filter_map(|d| match d {
                VirtioConfig::Block(disk) => Some(disk),
                _ => None,
            })
            .collect();
        if saved.len() != config.disks.len() {
            return Err(mismatch(format!(
                "the snapshot has {} disks and --drive gives {}: give one --drive per disk, \
                 in order, or none",
                saved.len(),
                config.disks.len()
            )));
        }
        for (index, (disk, given)) in saved.iter_mut().zip(&config.disks).enumerate() {
            if given.read_only != disk.read_only {
                return Err(mismatch(format!(
                    "disk {index} ({}) was {} in the snapshot; --drive path={} must say so \
                     ({})",
                    disk.path.display(),
                    if disk.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    given.path.display(),
                    if disk.read_only {
                        "add ,ro"
                    } else {
                        "drop ,ro"
                    }
                )));
            }
            if given.id.is_some() && given.id != disk.id {
                return Err(mismatch(format!(
                    "disk {index}'s serial is the snapshot's ({:?}): leave id= out",
                    disk.id.as_deref().unwrap_or("")
                )));
            }
            disk.path = given.path.clone();
        }
    }
    if !config.nets.is_empty() {
        let mut saved: Vec<_> = devices
            .iter_mut()
            .filter_map(|d| match d {
                VirtioConfig::Net(net) => Some(net),
                _ => None,
            })
            .collect();
        if saved.len() != config.nets.len() {
            return Err(mismatch(format!(
                "the snapshot has {} network interfaces and --net gives {}: give one --net \
                 per interface, in order, or none",
                saved.len(),
                config.nets.len()
            )));
        }
        for (net, given) in saved.iter_mut().zip(&config.nets) {
            if given.mac.is_some() && given.mac != net.mac {
                return Err(mismatch(
                    "an interface keeps the MAC its guest saw: leave mac= out".to_string(),
                ));
            }
            net.tap = given.tap.clone();
        }
    }
    Ok(())
}
