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

/// What `--fs` makes in `runtime` (its socket directories: `vmm-virtiofsd-<pid>-<n>`).
fn socket_dirs(runtime: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(runtime)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("vmm-virtiofsd-"))
        .collect()
}

/// Issue 23: SIGTERM while set-up is blocked ends vmm within 1 s (exit code 0), with nothing
/// left behind: (a) waiting for a virtiofsd that never listens (its socket directory and the
/// helper go too), (b) connecting to a `--fs socket=` whose listener never accepts (its
/// backlog is full, so connect(2) blocks). Before, the signal waited for set-up to end.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn sigterm_during_a_blocked_set_up_ends_vmm_at_once() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    let tag = std::process::id();
    let shared = common::scratch(&format!("fs-setup-{tag}"));
    let runtime = common::scratch(&format!("fs-setup-run-{tag}"));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&runtime).unwrap();
    // A "virtiofsd" that starts and never listens.
    let fake = common::scratch(&format!("fs-setup-fake-{tag}.sh"));
    let marker = format!("{}.{}", 1000 + tag % 1000, tag % 97);
    std::fs::write(&fake, format!("#!/bin/sh\nexec sleep {marker}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A vhost-user socket whose backlog is full: one connection waits, none is accepted.
    let blocked = common::scratch(&format!("fs-setup-{tag}.sock"));
    let _ = std::fs::remove_file(&blocked);
    let listener = std::os::unix::net::UnixListener::bind(&blocked).unwrap();
    // SAFETY: listen(2) again on a listening socket sets its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let _waiting = std::os::unix::net::UnixStream::connect(&blocked).unwrap();

    let kernel = common::guest("pvh.elf").display().to_string();
    let cases = [
        (
            "never listens",
            format!("tag=share,path={}", shared.display()),
        ),
        (
            "never accepts",
            format!("tag=share,socket={}", blocked.display()),
        ),
    ];
    for (what, fs) in cases {
        let child = Command::new(common::vmm_bin())
            .args(["--kernel", &kernel, "--memory", "32", "--fs", &fs])
            .env("VMM_VIRTIOFSD", &fake)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Set-up is blocked: the helper runs (a), or vmm just sits there (b).
        let start = Instant::now();
        while what == "never listens"
            && Command::new("pgrep")
                .args(["-f", &format!("sleep {marker}")])
                .output()
                .unwrap()
                .stdout
                .is_empty()
        {
            assert!(start.elapsed() < LIMIT, "the fake virtiofsd never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        if what == "never listens" {
            assert_eq!(
                socket_dirs(&runtime).len(),
                1,
                "the socket directory is there"
            );
        }
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let signalled = Instant::now();
        let run = common::finish(child, b"", LIMIT);
        let took = signalled.elapsed();
        assert_eq!(run.code(), Some(0), "{what}: {}", run.stderr);
        assert!(took < Duration::from_secs(1), "{what}: vmm took {took:?}");
        assert!(
            run.stderr.contains("vmm: SIGTERM during set-up; stopping"),
            "{what}: {}",
            run.stderr
        );
        assert_eq!(socket_dirs(&runtime), Vec::<String>::new(), "{what}");
        // The helper dies with vmm (PR_SET_PDEATHSIG).
        let start = Instant::now();
        while !Command::new("pgrep")
            .args(["-f", &format!("sleep {marker}")])
            .output()
            .unwrap()
            .stdout
            .is_empty()
        {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{what}: the helper outlived vmm"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(&blocked);
    let _ = std::fs::remove_dir_all(&shared);
    let _ = std::fs::remove_dir_all(&runtime);
}
