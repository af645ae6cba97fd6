//! Boots the default guest kernel (resources/build-kernel.sh) with the default initramfs
//! (resources/build-initramfs.sh). On a host with hardware virtualization the guest must reach
//! its /init and shut down cleanly; on a PVM host (software nested KVM, see
//! shared/notes/kvm-on-these-machines.md) it must reach its early-boot milestones and end with
//! the VMM's clear internal-error message, not a hang.

mod common;

use std::time::Duration;

use common::{host_is_pvm, kvm_or_skip, resource, run_vmm, Run};

/// Long enough for the LZ4 bzImage to decompress under the PVM emulator (about 30 s here).
const LIMIT: Duration = Duration::from_secs(240);
const MEMORY_MIB: u64 = 128;

/// The bytes of RAM the guest's e820 map (as the kernel prints it) says are usable.
fn e820_usable_bytes(out: &str) -> u64 {
    out.lines()
        .filter(|l| l.contains("BIOS-e820: [mem ") && l.ends_with("usable"))
        .map(|l| {
            let range = l.split("[mem ").nth(1).unwrap().split(']').next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            parse(end) - parse(start) + 1
        })
        .sum()
}

fn boot_linux(image: &str, cpus: u16) -> (Run, String) {
    let kernel_dir = resource("build-kernel.sh");
    let initramfs = resource("build-initramfs.sh");
    let kernel = kernel_dir.join(image).display().to_string();
    let initrd = initramfs.display().to_string();
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1";
    let run = run_vmm(
        &[
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--memory",
            &MEMORY_MIB.to_string(),
            "--cpus",
            &cpus.to_string(),
            "--cmdline",
            cmdline,
        ],
        b"",
        LIMIT,
    );
    (run, cmdline.to_string())
}

fn check_linux_boot(test: &str, image: &str, cpus: u16) {
    if !kvm_or_skip(test) {
        return;
    }
    let (run, cmdline) = boot_linux(image, cpus);
    assert!(
        !run.timed_out,
        "{test}: the VMM hung; stderr: {}",
        run.stderr
    );
    let out = run.stdout_str();
    assert!(out.contains("Linux version 6.1"), "{out}\n{}", run.stderr);
    assert!(
        out.contains(&format!("Command line: {cmdline}\r\n"))
            || out.contains(&format!("Command line: {cmdline}\n")),
        "{out}"
    );
    // The usable RAM in e820 is all of --memory but the EBDA and the legacy hole below 1 MiB.
    let legacy_hole = 0x10_0000 - 0x9_fc00;
    assert_eq!(
        e820_usable_bytes(&out) + legacy_hole,
        MEMORY_MIB << 20,
        "{out}"
    );
    assert!(
        out.contains("Intel MultiProcessor Specification v1.4"),
        "{out}"
    );
    for cpu in 0..cpus {
        assert!(
            out.contains(&format!("Processor #{cpu}")),
            "MP table CPU {cpu}:\n{out}"
        );
    }
    assert!(out.contains(&format!("Processors: {cpus}")), "{out}");
    if host_is_pvm() {
        println!("{test}: mode PVM (/sys/module/kvm_pvm exists): expecting early boot and a clear emulation-failure exit");
        assert_eq!(run.code(), Some(1), "stderr: {}", run.stderr);
        assert!(
            run.stderr.contains("KVM_EXIT_INTERNAL_ERROR"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("instruction bytes"), "{}", run.stderr);
        assert!(run.stderr.contains("kvm_pvm"), "{}", run.stderr);
    } else {
        println!("{test}: mode hardware KVM: expecting /init and a clean reboot");
        assert!(out.contains("VMM-INIT-OK uptime="), "{out}\n{}", run.stderr);
        assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    }
}

#[test]
fn linux_pvh_vmlinux_boots_with_two_cpus() {
    check_linux_boot("linux_pvh_vmlinux_boots_with_two_cpus", "vmlinux", 2);
}

#[test]
fn linux_bzimage_boots() {
    check_linux_boot("linux_bzimage_boots", "bzImage", 1);
}
