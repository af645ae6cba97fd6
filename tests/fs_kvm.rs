//! virtio-fs with the tiny test guests (no Linux driver: tests/linux.rs has that): the back end
//! vmm started is killed while the guest runs.

mod common;

use std::time::{Duration, Instant};

use common::api::{socket_path, vmm_args, ApiVm, LIMIT};
use common::virtiofsd_for;

/// virtiofsd killed while the guest runs: vmm ends within 5 s with exit code 1, saying which
/// share went away; it does not wait on a back end that will never answer.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_back_end_killed_mid_run_ends_vmm_with_a_clear_error() {
    let shared = common::scratch(&format!("fs-killed-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    std::env::set_var("VMM_VIRTIOFSD", common::virtiofsd());
    let sock = socket_path("fs-killed");
    let fs = format!("tag=share,path={}", shared.display());
    let vm = ApiVm::spawn(sock.clone(), &vmm_args(&sock, "test=lines", &["--fs", &fs]));
    vm.wait_for("lines: ready\n");
    let pids = virtiofsd_for(&shared);
    assert_eq!(pids.len(), 1, "vmm started one virtiofsd: {pids:?}");
    // SAFETY: kill(2) on a process this test's vmm started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let (status, stderr) = vm.wait(LIMIT);
    let took = killed.elapsed();
    assert_eq!(status, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "vmm took {took:?} to end");
    assert!(
        stderr.contains("the virtio-fs back end for tag \"share\" went away"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&shared);
}
