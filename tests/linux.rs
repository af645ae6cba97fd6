//! Boots the default guest kernel (resources/build-kernel.sh) with the default initramfs
//! (resources/build-initramfs.sh). On a host with hardware virtualization the guest must reach
//! its /init and shut down cleanly; on a PVM host (software nested KVM, see
//! shared/notes/kvm-on-these-machines.md) it must reach its early-boot milestones and end with
//! the VMM's clear internal-error message, not a hang.

mod common;

use std::time::Duration;

use common::{host_is_pvm, resource, run_vmm, Run};

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

const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1";

/// Boots `image` from the default kernel build with `disk_args` (the initramfs when empty).
fn boot_linux(image: &str, cpus: u16, disk_args: &[String]) -> Run {
    let kernel_dir = resource("build-kernel.sh");
    let kernel = kernel_dir.join(image).display().to_string();
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        kernel,
        "--memory".into(),
        MEMORY_MIB.to_string(),
        "--cpus".into(),
        cpus.to_string(),
        "--cmdline".into(),
        CMDLINE.into(),
    ];
    if disk_args.is_empty() {
        let initramfs = resource("build-initramfs.sh");
        args.extend(["--initrd".to_string(), initramfs.display().to_string()]);
    } else {
        args.extend(disk_args.iter().cloned());
    }
    run_vmm(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        b"",
        LIMIT,
    )
}

/// Checks the early-boot milestones every host reaches; returns the guest's output.
fn check_early_boot(run: &Run, cmdline: &str, cpus: u16) -> String {
    assert!(!run.timed_out, "the VMM hung; stderr: {}", run.stderr);
    let out = run.stdout_str();
    assert!(out.contains("Linux version 6.1"), "{out}\n{}", run.stderr);
    assert!(
        out.contains(&format!("Command line: {cmdline}\r\n"))
            || out.contains(&format!("Command line: {cmdline}\n")),
        "exact command line {cmdline:?} in:\n{out}"
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
    out
}

/// On a PVM host the guest must end with the VMM's clear emulation-failure message.
fn check_pvm_exit(test: &str, run: &Run) {
    common::say(&format!("{test}: mode PVM (/sys/module/kvm_pvm exists): expecting early boot and a clear emulation-failure exit"));
    assert_eq!(run.code(), Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("KVM_EXIT_INTERNAL_ERROR"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("instruction bytes"), "{}", run.stderr);
    assert!(run.stderr.contains("kvm_pvm"), "{}", run.stderr);
}

fn check_linux_boot(test: &str, image: &str, cpus: u16) {
    let run = boot_linux(image, cpus, &[]);
    let out = check_early_boot(&run, CMDLINE, cpus);
    if host_is_pvm() {
        check_pvm_exit(test, &run);
    } else {
        common::say(&format!(
            "{test}: mode hardware KVM: expecting /init and a clean reboot"
        ));
        assert!(out.contains("VMM-INIT-OK uptime="), "{out}\n{}", run.stderr);
        assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn linux_pvh_vmlinux_boots_with_two_cpus() {
    check_linux_boot("linux_pvh_vmlinux_boots_with_two_cpus", "vmlinux", 2);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn linux_bzimage_boots() {
    check_linux_boot("linux_bzimage_boots", "bzImage", 1);
}

/// The default root disk image, and a private copy of it named `name` (the guest mounts the
/// copy read-write).
fn private_rootfs(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let pristine = resource("build-rootfs.sh");
    let copy = common::scratch(name);
    std::fs::copy(&pristine, &copy).unwrap();
    (pristine, copy)
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn linux_boots_from_the_root_disk() {
    let test = "linux_boots_from_the_root_disk";
    let (pristine, disk) = private_rootfs("linux-rootfs.ext4");
    let run = boot_linux(
        "vmlinux",
        1,
        &["--rootfs".to_string(), disk.display().to_string()],
    );
    // The VMM appended the root disk and its virtio-mmio slot to the command line.
    let cmdline = format!("{CMDLINE} root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5");
    let out = check_early_boot(&run, &cmdline, 1);
    if host_is_pvm() {
        check_pvm_exit(test, &run);
    } else {
        common::say(&format!(
            "{test}: mode hardware KVM: expecting the root disk mounted and its init run"
        ));
        let id = std::process::Command::new("debugfs")
            .args(["-R", "cat /etc/vmm-rootfs-id"])
            .arg(&pristine)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(
            out.contains(&format!("VMM-ROOTFS-OK {id}")),
            "{out}\n{}",
            run.stderr
        );
        assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    }
}

#[test]
#[cfg_attr(
    any(no_kvm, no_netns),
    ignore = "needs a usable /dev/kvm, and root with iproute2 and /dev/net/tun for a network namespace"
)]
fn linux_network_over_a_tap() {
    let test = "linux_network_over_a_tap";
    let ns = common::Netns::create("linux", Some("10.0.2.1/24")).expect(
        "a network namespace with a TAP (root, iproute2 and /dev/net/tun were there at build time)",
    );
    let (_, disk) = private_rootfs("linux-net-rootfs.ext4");
    let kernel = resource("build-kernel.sh").join("vmlinux");
    // The guest configures eth0, receives a file over TCP and prints its hash.
    let guest_cmd = "ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up; echo VMM-NET-UP; \
                     nc -l -p 5000 > /tmp/received; sha256sum /tmp/received";
    let cmdline = format!("{CMDLINE} vmmcmd=\"{guest_cmd}\"");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(common::vmm_bin())
        .args([
            "--kernel",
            &kernel.display().to_string(),
            "--memory",
            &MEMORY_MIB.to_string(),
        ])
        .args([
            "--rootfs",
            &disk.display().to_string(),
            "--net",
            &format!("tap={}", common::TAP),
        ])
        .args(["--cmdline", &cmdline])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if host_is_pvm() {
        let run = common::finish(child, b"", LIMIT);
        let expected = format!(
            "{cmdline} root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        check_early_boot(&run, &expected, 1);
        check_pvm_exit(test, &run);
        return;
    }
    common::say(&format!(
        "{test}: mode hardware KVM: ping the guest and send it a file over TCP"
    ));
    let seen = common::read_until(&mut child, "VMM-NET-UP", LIMIT);
    assert!(seen.contains("VMM-NET-UP"), "{seen}");
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "5",
            "10.0.2.15",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + i / 4096) as u8).collect();
    common::in_netns(&ns.name, || {
        use std::io::Write;
        let start = std::time::Instant::now();
        let mut stream = loop {
            match std::net::TcpStream::connect("10.0.2.15:5000") {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect to the guest: {e}"),
            }
        };
        stream.write_all(&payload).unwrap();
    });
    let hash_file = common::scratch("linux-net-payload");
    std::fs::write(&hash_file, &payload).unwrap();
    let sha = std::process::Command::new("sha256sum")
        .arg(&hash_file)
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let run = common::finish(child, b"", LIMIT);
    let out = run.stdout_str();
    assert!(
        out.contains(&format!("{sha}  /tmp/received")),
        "{out}\n{}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
}
