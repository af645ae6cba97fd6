//! The `Vmm` owner in this very process, as a library user holds it: an error after the vCPUs
//! started ends `run` promptly with that error, and no vCPU thread is left behind.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::guest;
use vmm::config::{VirtioConfig, VmConfig};
use vmm::vmm::{Error, Vmm};

/// The tests count this process's vCPU threads: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The names of this process's threads that run vCPUs (`vcpuN`).
fn vcpu_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let comm = task.unwrap().path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            if name.starts_with("vcpu") {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

fn config(api_socket: PathBuf) -> VmConfig {
    VmConfig {
        kernel: guest("pvh.elf"),
        initrd: None,
        // Busy in the guest forever: the vCPUs are running guest code when the error comes.
        cmdline: "test=spin".into(),
        memory_mib: 32,
        cpus: 2,
        devices: vec![VirtioConfig::Rng],
        root_disk: false,
        kvm_path: PathBuf::from("/dev/kvm"),
        api_socket: Some(api_socket),
        exit_stats: false,
        // The filters would apply to this test process's threads.
        seccomp: false,
        thp: true,
        jail: None,
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn an_error_after_the_vcpus_started_ends_run_with_it_and_no_thread_left() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::scratch(&format!("lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vmm = Vmm::boot(&config(dir.join("api.sock"))).expect("boot the spin guest");
    assert_eq!(vcpu_threads().len(), 2, "one thread per vCPU, configured");
    // The API socket is bound only after the vCPUs started (off the path to their first
    // entry): with its directory gone, that bind fails.
    std::fs::remove_dir_all(&dir).unwrap();
    let started = Instant::now();
    let err = vmm.run().expect_err("the API socket cannot be bound");
    let took = started.elapsed();
    assert!(matches!(err, Error::Socket(_)), "{err}");
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(
        took < Duration::from_secs(5),
        "run took {took:?} to give up"
    );
    assert_eq!(vcpu_threads(), Vec::<String>::new(), "vCPU threads left");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_vmm_dropped_before_it_runs_leaves_no_thread() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::scratch(&format!("lifecycle-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vmm = Vmm::boot(&config(dir.join("api.sock"))).expect("boot the spin guest");
    assert_eq!(vcpu_threads().len(), 2);
    drop(vmm);
    assert_eq!(vcpu_threads(), Vec::<String>::new(), "vCPU threads left");
    let _ = std::fs::remove_dir_all(&dir);
}
