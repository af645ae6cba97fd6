//! Starting a VM from a snapshot (`vmm --restore DIR`), in the order of the boot story with
//! the saved state in place of the kernel: read and check the snapshot → open its disks and
//! TAPs → map its memory file → VM, with the saved interrupt controllers, PIT and clock → vCPUs
//! with their saved registers → devices with their saved registers and queues → run.
//!
//! Everything is checked before any vCPU runs: a snapshot that cannot start here (another
//! format version, a corrupt file, a CPU feature this host lacks, a missing disk) is an error
//! with exit code 2, never a half-started guest.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use boot::{memory, mptable};
use kvm_ioctls::Cap;

use super::{
    create_devices, create_vm, install_signal_handlers, open_disks_and_taps, run, spawn_vcpus,
    Error, Machine,
};
use crate::config::RestoreConfig;
use crate::exit::ExitReason;
use crate::snapshot::state::{self, VmState};
use crate::snapshot::{self, Snapshot};
use crate::{api, cpuid, timeline};

fn restore_err(what: &'static str) -> impl Fn(String) -> Error {
    move |message| Error::Restore { what, message }
}

/// Starts the VM saved in `config.dir` and runs it to its end, like [`super::run_vm`].
pub fn restore_vm(config: &RestoreConfig) -> Result<(ExitReason, Option<u8>), Error> {
    if let Some(path) = &config.api_socket {
        api::socket::check_path(path)?;
    }
    let Snapshot { state, memory } = snapshot::load(&config.dir)?;
    timeline::mark("snapshot read and checked");
    let VmState {
        config: saved,
        vm: vm_state,
        vcpus: vcpu_states,
        serial: serial_state,
        virtio: virtio_states,
        guest_exit_code,
    } = state;
    if saved.cpus > mptable::MAX_SUPPORTED_CPUS {
        return Err(Error::TooManyCpusForMpTable {
            requested: u16::from(saved.cpus),
            max: mptable::MAX_SUPPORTED_CPUS,
        });
    }
    let (disks, taps) = open_disks_and_taps(&saved.disks, &saved.nets)?;
    let signal_evt = install_signal_handlers()?;

    let mem = memory::map_guest_memory_file(saved.memory_mib << 20, &memory).map_err(|source| {
        Error::Memory {
            mib: saved.memory_mib,
            source: source.into(),
        }
    })?;
    timeline::mark("memory mapped from the snapshot");
    let cpus = saved.cpus;
    let (exit, filters, vcpu_threads) = spawn_vcpus(&mem, cpus, config.seccomp)?;

    let vm = create_vm(&config.kvm_path, &mem, u16::from(cpus))?;
    for (index, vcpu) in (0..cpus).zip(&vcpu_states) {
        let here = cpuid::normalize(&vm.supported_cpuid, index, cpus);
        state::check_cpuid(&vcpu.cpuid, here.as_slice()).map_err(|e| Error::Restore {
            what: "the CPU",
            message: format!("vCPU {index}: {e}"),
        })?;
    }
    state::restore_vm(&vm.fd, &vm_state)
        .map_err(restore_err("the VM's interrupt controllers, PIT and clock"))?;
    let xsave_fits = vm.kvm.check_extension_int(Cap::Xsave2) <= snapshot::XSAVE_LEN;
    let vm = Arc::new(vm);
    vcpu_threads.restore(&vm, vcpu_states, xsave_fits);

    let devices = create_devices(&vm, &mem, disks, taps)?;
    devices
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restore(&serial_state)
        .map_err(|e| Error::Restore {
            what: "the serial port",
            message: e.to_string(),
        })?;
    for (index, (transport, state)) in devices.transports.iter().zip(&virtio_states).enumerate() {
        transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(state)
            .map_err(|e| Error::Restore {
                what: "a virtio device",
                message: format!("device {index}: {e}"),
            })?;
    }
    if let Some(code) = guest_exit_code {
        devices.guest_code.store(u16::from(code), Ordering::SeqCst);
    }
    timeline::mark("devices restored");
    run(Machine {
        vm,
        mem,
        exit,
        signal_evt,
        vcpu_threads,
        devices,
        config: saved,
        api_socket: config.api_socket.clone(),
        exit_stats: config.exit_stats,
        paused: config.paused,
        filters,
        saved_vm: Some(vm_state),
    })
}
