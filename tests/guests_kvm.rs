//! End-to-end tests of the VMM with the tiny freestanding test guests (tests/guests/).
//! Each needs /dev/kvm: where the build found none, the runner reports them as ignored.

mod common;

use std::time::Duration;

use common::{finish, guest, run_vmm, spawn};

const LIMIT: Duration = Duration::from_secs(60);

fn pvh(test: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        guest("pvh.elf").display().to_string(),
        "--memory".into(),
        "32".into(),
        "--cmdline".into(),
        test.into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn serial_output_arrives_byte_for_byte() {
    let a = pvh("test=hello");
    let run = run_vmm(&args(&a), b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    assert_eq!(
        run.stdout_str(),
        // The VMM appends its virtio-rng device (on by default) to the command line.
        "vmm-test-guest: hello from PVH guest\ncmdline: test=hello \
         virtio_mmio.device=4K@0xd0000000:5\n",
        "stderr: {}",
        run.stderr
    );
    assert_eq!(
        run.code(),
        Some(0),
        "i8042 reset must exit 0; stderr: {}",
        run.stderr
    );
}

/// A guest linked with binutils' defaults has a segment of just its ELF headers at 0xff000:
/// that is guest RAM the VMM does not use, so the guest boots (as on Firecracker, Cloud
/// Hypervisor and QEMU).
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn default_linked_pvh_guest_with_a_segment_below_1_mib_boots() {
    let kernel = guest("ld-default.elf").display().to_string();
    let run = run_vmm(&["--kernel", &kernel, "--memory", "16"], b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    assert_eq!(
        run.stdout_str(),
        "hello from a PVH guest linked the default way\n",
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn long_mode_entry_sees_zero_page() {
    let kernel = guest("long64.elf").display().to_string();
    let run = run_vmm(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "64",
            "--cmdline",
            "hello from the zero page",
        ],
        b"",
        LIMIT,
    );
    assert!(!run.timed_out, "timed out: {run:?}");
    let out = run.stdout_str();
    assert!(
        out.starts_with(
            "vmm-test-guest: hello from 64-bit guest\ncmdline: hello from the zero page \
             virtio_mmio.device=4K@0xd0000000:5\n"
        ),
        "{out}\nstderr: {}",
        run.stderr
    );
    // The e820 RAM entries the guest read from the zero page add up to --memory.
    let ram: u64 = out
        .lines()
        .filter_map(|l| l.strip_prefix("e820: "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "1")
                .then(|| u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap())
        })
        .sum();
    let low_hole = 0x10_0000 - 0x9_fc00; // EBDA and legacy hole below 1 MiB
    assert_eq!(ram + low_hole, 64 << 20, "{out}");
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn stdin_reaches_the_guest_and_comes_back() {
    let a = pvh("test=echo");
    // More than the 16550's 64-byte FIFO, to exercise the host-side queue.
    let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = text.clone();
    input.push(0x04);
    let run = run_vmm(&args(&a), &input, LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    let mut expected = b"echo: ready\n".to_vec();
    expected.extend_from_slice(&text);
    expected.extend_from_slice(b"\necho: done\n");
    assert_eq!(
        run.stdout_str(),
        String::from_utf8(expected).unwrap(),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0));
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn every_vcpu_runs_and_reports_its_apic_id() {
    let mut a = pvh("test=smp cpus=4");
    a.extend(["--cpus".to_string(), "4".to_string()]);
    let run = run_vmm(&args(&a), b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    let out = run.stdout_str();
    for id in 0..4 {
        let line = format!("cpu {id} online");
        assert_eq!(
            out.lines().filter(|l| *l == line).count(),
            1,
            "{line} in:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l == "smp: 4 cpus online"),
        "{out}\n{}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn triple_fault_exits_cleanly() {
    let a = pvh("test=triple");
    let run = run_vmm(&args(&a), b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    assert_eq!(run.stdout_str(), "triple: faulting\n");
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    // The only trace of a fatal fault for most guests: which vCPU, and where.
    assert!(
        run.stderr
            .contains("vCPU 0 triple-faulted (KVM_EXIT_SHUTDOWN) at RIP "),
        "stderr: {}",
        run.stderr
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn emulation_failure_is_reported_clearly() {
    let a = pvh("test=int3");
    let run = run_vmm(&args(&a), b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    assert_eq!(run.stdout_str(), "int3: trapping\n");
    if common::host_is_pvm() {
        common::say("mode: PVM host (/sys/module/kvm_pvm): int3 is an emulation failure here");
        assert_eq!(run.code(), Some(1), "stderr: {}", run.stderr);
        let err = &run.stderr;
        assert!(
            err.contains("error: vCPU 0: KVM_EXIT_INTERNAL_ERROR"),
            "{err}"
        );
        assert!(err.contains("RIP 0x"), "{err}");
        assert!(err.contains("instruction bytes cc"), "{err}");
        assert!(err.contains("/sys/module/kvm_pvm"), "{err}");
    } else {
        common::say("mode: hardware KVM: int3 with an empty IDT triple-faults");
        assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    }
}

/// A vCPU that asks for a reset and then runs into an instruction this host cannot emulate
/// (a PVM host; elsewhere a triple fault): the reset decides how the VM ended, every time. It
/// used to depend on whether the event loop recorded the reset before the vCPU ran on (5
/// wrong verdicts in 40 runs).
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_reset_request_decides_the_verdict_whatever_the_vcpu_does_next() {
    let a = pvh("test=resetint3");
    const RUNS: usize = 200;
    for i in 0..RUNS {
        let run = run_vmm(&args(&a), b"", LIMIT);
        assert!(!run.timed_out, "run {i}: timed out: {run:?}");
        assert_eq!(run.stdout_str(), "resetint3: resetting\n", "run {i}");
        assert_eq!(
            run.code(),
            Some(0),
            "run {i} of {RUNS}: stderr: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("error"), "run {i}: {}", run.stderr);
    }
}

fn signal_stops(test: &str, cpus: &str, signal: i32) {
    let mut a = pvh(&format!("test={test}"));
    a.extend(["--cpus".to_string(), cpus.to_string()]);
    let mut child = spawn(&args(&a));
    let ready = format!("{test}: ready\n");
    let seen = common::read_until(&mut child, &ready, LIMIT);
    assert!(seen.contains(&ready), "guest never got ready: {seen:?}");
    let pid = child.id() as i32;
    // The guest's vCPUs are busy or halted: count the VMM's threads first.
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert!(
        threads > usize::from(cpus.parse::<u8>().unwrap()),
        "threads: {threads}"
    );
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let run = finish(child, b"", Duration::from_secs(10));
    assert!(
        !run.timed_out,
        "the VMM did not stop on signal {signal}: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process left behind"
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn sigterm_stops_a_busy_guest() {
    signal_stops("spin", "1", libc::SIGTERM);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn sigint_stops_a_halted_smp_guest() {
    // vCPU 1 never receives a SIPI, so it sleeps in KVM_RUN; vCPU 0 is halted with IF=0.
    signal_stops("halt", "2", libc::SIGINT);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn memory_beyond_the_mmio_gap_is_mapped_above_4_gib() {
    let kernel = guest("long64.elf").display().to_string();
    // 4 GiB: 3 GiB below the 32-bit MMIO gap, 1 GiB above 4 GiB.
    let run = run_vmm(&["--kernel", &kernel, "--memory", "4096"], b"", LIMIT);
    assert!(!run.timed_out, "timed out: {run:?}");
    let out = run.stdout_str();
    assert!(
        out.lines()
            .any(|l| l == "e820: 0x0000000000100000 0x00000000bff00000 1"),
        "RAM from 1 MiB up to the gap at 3 GiB:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "e820: 0x0000000100000000 0x0000000040000000 1"),
        "the last GiB above 4 GiB:\n{out}"
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}
