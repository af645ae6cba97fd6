//! seccomp on every thread: while a guest runs, `/proc/<pid>/task/*/status` says `Seccomp: 2`
//! (filter mode) for each of the VMM's threads, and 0 with `--no-seccomp`; with the
//! `seccomp-trigger` feature (`cargo test --features seccomp-trigger --test seccomp_kvm`,
//! which `.ci/run` runs), a vCPU thread that makes a system call outside its list ends the
//! VMM with the message naming the call and the thread.

mod common;

use std::time::{Duration, Instant};

use common::guest;

const LIMIT: Duration = Duration::from_secs(60);

/// The `Seccomp:` field of each thread of `pid`, once every thread has it at `want` (or
/// whatever they have after 10 s).
fn seccomp_modes(pid: u32, want: &str) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let mut modes = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let task = task.unwrap().path();
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            modes.push((field("Name:"), field("Seccomp:")));
        }
        if modes.iter().all(|(_, m)| m == want) || start.elapsed() > Duration::from_secs(10) {
            return modes;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_guest(extra: &[&str]) -> std::process::Child {
    let kernel = guest("pvh.elf").display().to_string();
    let mut args = vec![
        "--kernel",
        &kernel,
        "--memory",
        "32",
        "--cpus",
        "2",
        "--cmdline",
        "test=count",
    ];
    args.extend_from_slice(extra);
    let mut child = common::spawn(&args);
    common::read_until(&mut child, "count: 1\n", LIMIT);
    child
}

fn stop(mut child: std::process::Child) {
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "vmm did not end cleanly with SIGTERM"
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn every_thread_runs_under_its_filter_and_no_seccomp_turns_them_off() {
    let child = count_guest(&[]);
    let modes = seccomp_modes(child.id(), "2");
    // The main thread (the event loop and the API) and the two vCPU threads.
    assert!(modes.len() >= 3, "{modes:?}");
    assert!(modes.iter().any(|(name, _)| name == "vcpu1"), "{modes:?}");
    assert!(
        modes.iter().all(|(_, mode)| mode == "2"),
        "a thread without its filter: {modes:?}"
    );
    stop(child);

    let child = count_guest(&["--no-seccomp"]);
    let modes = seccomp_modes(child.id(), "0");
    assert!(modes.iter().all(|(_, mode)| mode == "0"), "{modes:?}");
    stop(child);
}

#[test]
#[cfg_attr(
    any(no_kvm, not(feature = "seccomp-trigger")),
    ignore = "needs /dev/kvm and `--features seccomp-trigger`"
)]
fn a_denied_system_call_ends_the_vmm_naming_the_call_and_the_thread() {
    // test=ports writes the bytes 0xfd, 0xfe, … to the port: byte 0xfd makes the vCPU thread
    // call getppid.
    let kernel = guest("pvh.elf").display().to_string();
    let run = common::run_vmm(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "32",
            "--cmdline",
            "test=ports port=0x80 writes=300 first=0xfd",
        ],
        b"",
        LIMIT,
    );
    assert_eq!(run.code(), Some(159), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "vmm: seccomp: thread vcpu0 made system call 110 (getppid), which is not allowed"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout_str().contains("ports: done"),
        "the guest went on"
    );
}

/// Issue 23: the filters check arguments. On a vCPU thread (a byte on the debug port) and on
/// the main thread (a byte on stdin), each of these ends vmm with 159, naming the call:
/// `mprotect` with `PROT_EXEC` (allowed without it), `ioctl(TUNSETIFF)` (the vCPU threads may
/// make only their listed requests: `KVM_RUN` and the like), `openat(O_CREAT)` of a file that
/// may exist (the main thread opens files only to read or to create new ones). Before the
/// argument rules, the first two ran.
#[test]
#[cfg_attr(
    any(no_kvm, not(feature = "seccomp-trigger")),
    ignore = "needs /dev/kvm and `--features seccomp-trigger`"
)]
fn calls_with_forbidden_arguments_end_the_vmm() {
    let kernel = guest("pvh.elf").display().to_string();
    let cases: [(&str, Option<u8>, &str); 5] = [
        (
            "test=ports port=0x80 writes=1 first=0xfe",
            None,
            "thread vcpu0 made system call 10 (mprotect)",
        ),
        (
            "test=ports port=0x80 writes=1 first=0xff",
            None,
            "thread vcpu0 made system call 16 (ioctl)",
        ),
        (
            "test=echo",
            Some(0xfe),
            "thread vmm made system call 10 (mprotect)",
        ),
        (
            "test=echo",
            Some(0xff),
            "thread vmm made system call 16 (ioctl)",
        ),
        (
            "test=echo",
            Some(0xfa),
            "thread vmm made system call 257 (openat)",
        ),
    ];
    for (cmdline, stdin_byte, message) in cases {
        let mut child =
            common::spawn(&["--kernel", &kernel, "--memory", "32", "--cmdline", cmdline]);
        let input = match stdin_byte {
            Some(byte) => {
                common::read_until(&mut child, "echo: ready\n", LIMIT);
                vec![byte]
            }
            None => Vec::new(),
        };
        let run = common::finish(child, &input, LIMIT);
        assert_eq!(run.code(), Some(159), "{cmdline}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{cmdline}: {}", run.stderr);
    }
}
