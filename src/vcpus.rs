//! The vCPU threads: one per vCPU, started before the VM exists (starting a thread takes a few
//! hundred microseconds on some hosts), each creating and configuring its vCPU as soon as it
//! is sent the VM, then running it once it is sent the buses; stopped with one kick each.

use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use boot::loader::EntryPoint;
use devices::IoBuses;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::exit::VmExit;
use crate::vcpu::{self, Vcpu};
use crate::vm::Vm;
use crate::{cpuid, timeline};

/// A vCPU thread, started before the VM exists. Sent the VM and the kernel's entry point, it
/// creates and configures its vCPU and says how that went; sent the buses, it runs the vCPU.
/// It ends without running if either sender goes away first.
struct VcpuThread {
    index: u8,
    handle: JoinHandle<()>,
    setup: mpsc::Sender<(Arc<Vm>, EntryPoint)>,
    configured: mpsc::Receiver<Result<(), vcpu::Error>>,
    go: mpsc::Sender<Arc<IoBuses>>,
}

/// The vCPU threads not yet let run; dropped (on an error path), they end and are joined.
pub struct VcpuThreads(Vec<VcpuThread>);

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            drop(thread.setup);
            drop(thread.go);
            if thread.handle.join().is_err() {
                log::error!("vCPU thread {} panicked", thread.index);
            }
        }
    }
}

impl VcpuThreads {
    /// Sends every thread the VM and the kernel's entry point (for vCPU 0, the boot processor).
    pub fn setup(&self, vm: &Arc<Vm>, entry: EntryPoint) {
        for thread in &self.0 {
            // A thread that is gone says why when it is waited for.
            let _ = thread.setup.send((vm.clone(), entry));
        }
    }
}

/// Starts one thread per vCPU; vCPU 0 is the boot processor.
pub fn spawn(mem: &GuestMemoryMmap, exit: &Arc<VmExit>, cpus: u8) -> io::Result<VcpuThreads> {
    let mut threads = VcpuThreads(Vec::with_capacity(usize::from(cpus)));
    for index in 0..cpus {
        let (mem, exit) = (mem.clone(), exit.clone());
        let (setup, setup_rx) = mpsc::channel::<(Arc<Vm>, EntryPoint)>();
        let (configured_tx, configured) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<Arc<IoBuses>>();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let Ok((vm, entry)) = setup_rx.recv() else {
                    return;
                };
                let vcpu = Vcpu::new(&vm.fd, index).and_then(|vcpu| {
                    let cpuid = cpuid::normalize(&vm.supported_cpuid, index, cpus);
                    vcpu.configure(&cpuid, (index == 0).then_some(entry))?;
                    Ok(vcpu)
                });
                drop(vm);
                let vcpu = match vcpu {
                    Ok(vcpu) => {
                        let _ = configured_tx.send(Ok(()));
                        vcpu
                    }
                    Err(e) => {
                        let _ = configured_tx.send(Err(e));
                        return;
                    }
                };
                let Ok(io) = go_rx.recv() else {
                    return;
                };
                if index == 0 {
                    timeline::mark("first vCPU entry");
                }
                vcpu.run(io, mem, exit)
            });
        match spawned {
            Ok(handle) => threads.0.push(VcpuThread {
                index,
                handle,
                setup,
                configured,
                go,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(threads)
}

/// Waits until every vCPU is configured, then lets them all run; on any failure, ends them
/// all without running and returns the first error.
pub fn start(
    mut threads: VcpuThreads,
    io: &Arc<IoBuses>,
) -> Result<Vec<JoinHandle<()>>, vcpu::Error> {
    for thread in &threads.0 {
        // A closed channel: the thread ended (panicked) before it could say.
        let result = thread.configured.recv().unwrap_or(Err(vcpu::Error::Thread {
            index: thread.index,
        }));
        result?;
    }
    timeline::mark("vCPUs configured");
    Ok(std::mem::take(&mut threads.0)
        .into_iter()
        .map(|thread| {
            // A thread that is gone has already said why through `configured`.
            let _ = thread.go.send(io.clone());
            thread.handle
        })
        .collect())
}

/// Kicks every vCPU thread out of `KVM_RUN` once (the exit reason is already recorded, and
/// the kick sets `immediate_exit`: see [`crate::vcpu`]), then joins them.
pub fn stop(threads: Vec<JoinHandle<()>>) {
    for thread in threads.iter().filter(|t| !t.is_finished()) {
        if let Err(e) = thread.kill(vcpu::kick_signal()) {
            log::warn!("cannot kick a vCPU thread: {e}");
        }
    }
    for thread in threads {
        if thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}
