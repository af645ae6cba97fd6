//! Each bad input gets one clear `error: …` line (then `caused by: …` lines), exit code 2 for
//! usage errors and 1 for runtime errors, and never a panic.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use common::{guest, scratch, vmm_bin};

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// A copy of the vmm binary that an unprivileged user can run: the build tree may sit in a
/// directory only its owner can enter.
fn public_vmm() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-errors-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("vmm");
        std::fs::copy(vmm_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
    .clone()
}

fn vmm(args: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> Outcome {
    let bin = if uid.is_some() {
        public_vmm()
    } else {
        vmm_bin()
    };
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "the VMM panicked: {stderr}");
    Outcome {
        code: out.status.code(),
        stderr,
    }
}

fn assert_error(o: &Outcome, code: i32, first_line: &str) {
    assert_eq!(o.code, Some(code), "{}", o.stderr);
    let first = o.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "first line: {first:?}");
    assert!(
        first.contains(first_line),
        "expected {first_line:?} in {:?}",
        o.stderr
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An unprivileged uid to drop to when the tests run as root (`nobody`).
const NOBODY: u32 = 65534;

#[test]
fn missing_kvm_device() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(
        &["--kernel", &kernel],
        &[("VMM_KVM_PATH", "/nonexistent/kvm")],
        None,
    );
    assert_error(
        &o,
        1,
        "/nonexistent/kvm does not exist: this host has no KVM",
    );
}

#[test]
fn no_permission_on_kvm_device() {
    // A stand-in device node that only its owner may open.
    let fake = scratch("kvm-no-permission");
    std::fs::write(&fake, b"").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o000)).unwrap();
    let kernel = guest("pvh.elf");
    // nobody must be able to read the kernel to get as far as KVM.
    let kernel_copy =
        std::env::temp_dir().join(format!("vmm-perm-test-{}.elf", std::process::id()));
    std::fs::copy(&kernel, &kernel_copy).unwrap();
    std::fs::set_permissions(&kernel_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fake_s = fake.display().to_string();
    let uid = is_root().then_some(NOBODY);
    if uid.is_some() {
        // nobody needs to traverse to the fake node: put it somewhere world-accessible.
        let public = std::env::temp_dir().join(format!("vmm-kvm-{}", std::process::id()));
        std::fs::copy(&fake, &public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = public.display().to_string();
        let o = vmm(
            &["--kernel", &kernel_copy.display().to_string()],
            &[("VMM_KVM_PATH", &p)],
            uid,
        );
        std::fs::remove_file(&public).ok();
        std::fs::remove_file(&kernel_copy).ok();
        assert_error(
            &o,
            1,
            &format!("no permission to open {p}: add your user to the 'kvm' group"),
        );
    } else {
        let o = vmm(
            &["--kernel", &kernel_copy.display().to_string()],
            &[("VMM_KVM_PATH", &fake_s)],
            None,
        );
        std::fs::remove_file(&kernel_copy).ok();
        assert_error(&o, 1, &format!("no permission to open {fake_s}"));
    }
}

#[test]
fn missing_kernel() {
    let o = vmm(&["--kernel", "/nonexistent/bzImage"], &[], None);
    assert_error(&o, 2, "cannot open the kernel /nonexistent/bzImage");
    assert!(
        o.stderr.contains("caused by: No such file or directory"),
        "{}",
        o.stderr
    );
}

#[test]
fn unreadable_kernel() {
    let dir = std::env::temp_dir();
    let o = vmm(&["--kernel", &dir.display().to_string()], &[], None);
    assert_error(&o, 2, "cannot open the kernel");
    assert!(
        o.stderr.contains("caused by: not a regular file"),
        "{}",
        o.stderr
    );
    if is_root() {
        let secret = public_vmm().parent().unwrap().join("unreadable-kernel");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = secret.display().to_string();
        let o = vmm(&["--kernel", &path], &[], Some(NOBODY));
        assert_error(&o, 2, "cannot open the kernel");
        assert!(
            o.stderr.contains("caused by: Permission denied"),
            "{}",
            o.stderr
        );
    }
}

#[test]
fn not_a_kernel() {
    let junk = scratch("not-a-kernel");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let o = vmm(&["--kernel", &junk.display().to_string()], &[], None);
    assert_error(&o, 2, "cannot load the kernel");
    assert!(o.stderr.contains("caused by: "), "{}", o.stderr);
    assert!(o.stderr.contains("neither a bzImage"), "{}", o.stderr);
    assert!(o.stderr.contains("nor an ELF vmlinux"), "{}", o.stderr);
}

#[test]
fn missing_initrd() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(
        &["--kernel", &kernel, "--initrd", "/nonexistent/initrd"],
        &[],
        None,
    );
    assert_error(&o, 2, "cannot open the initrd /nonexistent/initrd");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn initrd_larger_than_the_room_below_its_limit() {
    let big = scratch("big-initrd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(40 << 20).unwrap();
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(
        &[
            "--kernel",
            &kernel,
            "--memory",
            "32",
            "--initrd",
            &big.display().to_string(),
        ],
        &[],
        None,
    );
    assert_error(&o, 2, "cannot load the initrd");
    assert!(o.stderr.contains("caused by: "), "{}", o.stderr);
    assert!(
        o.stderr.contains("--memory"),
        "the message says what to do: {}",
        o.stderr
    );
}

#[test]
fn zero_memory_and_zero_cpus_are_usage_errors() {
    let kernel = guest("pvh.elf").display().to_string();
    for (flag, value) in [("--memory", "0"), ("--cpus", "0")] {
        let o = vmm(&["--kernel", &kernel, flag, value], &[], None);
        assert_eq!(o.code, Some(2), "{flag} {value}: {}", o.stderr);
        assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
        assert!(o.stderr.contains(flag), "{}", o.stderr);
    }
}

#[test]
fn memory_beyond_the_host() {
    let kernel = guest("pvh.elf").display().to_string();
    // 16 EiB - 1 MiB: no host has it.
    let o = vmm(
        &["--kernel", &kernel, "--memory", "17592186044415"],
        &[],
        None,
    );
    assert_error(
        &o,
        2,
        "--memory 17592186044415 MiB is more than this host has",
    );
    let o = vmm(&["--kernel", &kernel, "--memory", "2"], &[], None);
    assert_error(&o, 2, "--memory 2 MiB is too small");
}

#[test]
fn cpus_beyond_the_mp_table() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(&["--kernel", &kernel, "--cpus", "300"], &[], None);
    assert_error(&o, 2, "--cpus 300 is more than the VMM supports (254");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn cpus_beyond_kvms_limit() {
    let kernel = guest("pvh.elf").display().to_string();
    // KVM's limit is checked against the host: find it through the VMM's own message by
    // asking for the most the MP table allows, which passes on hosts that allow 254 or more.
    let o = vmm(
        &[
            "--kernel",
            &kernel,
            "--cpus",
            "254",
            "--memory",
            "16",
            "--cmdline",
            "test=triple",
        ],
        &[],
        None,
    );
    if o.code == Some(2) {
        assert!(
            o.stderr.contains("is more than this host's KVM allows"),
            "{}",
            o.stderr
        );
    } else {
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    }
}

#[test]
fn bad_tap_name() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(&["--kernel", &kernel, "--net", "tap=bad/name"], &[], None);
    assert_error(&o, 2, "cannot use the TAP device bad/name for --net");
    assert!(o.stderr.contains("caused by: "), "{}", o.stderr);
    let o = vmm(
        &["--kernel", &kernel, "--net", "tap=a-name-that-is-too-long"],
        &[],
        None,
    );
    assert_error(&o, 2, "cannot use the TAP device a-name-that-is-too-long");
}

/// `--fs`: a directory that is not one, a virtiofsd that is not there, one that ends at once,
/// a socket nobody listens on. Each is a usage error before KVM is touched.
#[test]
fn unusable_shared_directories() {
    let kernel = guest("pvh.elf").display().to_string();
    let here = std::env::current_dir().unwrap().display().to_string();
    let fs =
        |spec: &str, env: &[(&str, &str)]| vmm(&["--kernel", &kernel, "--fs", spec], env, None);
    let o = fs("tag=x,path=/nonexistent/dir", &[]);
    assert_error(&o, 2, "cannot share a directory as virtio-fs tag \"x\"");
    assert!(
        o.stderr
            .contains("caused by: /nonexistent/dir is not a directory vmm can read"),
        "{}",
        o.stderr
    );
    let o = fs(&format!("tag=x,path={here}"), &[("PATH", "/nonexistent")]);
    assert_error(&o, 2, "cannot share a directory as virtio-fs tag \"x\"");
    assert!(o.stderr.contains("cargo install virtiofsd"), "{}", o.stderr);
    // A "virtiofsd" that ends at once.
    let o = fs(
        &format!("tag=x,path={here}"),
        &[("VMM_VIRTIOFSD", "/bin/false")],
    );
    assert_error(&o, 2, "cannot share a directory as virtio-fs tag \"x\"");
    assert!(
        o.stderr.contains("virtiofsd ended at start"),
        "{}",
        o.stderr
    );
    let socket = scratch("no-one-listens.sock").display().to_string();
    let o = fs(&format!("tag=x,socket={socket}"), &[]);
    assert_error(&o, 2, "cannot share a directory as virtio-fs tag \"x\"");
    assert!(
        o.stderr.contains("cannot connect to the vhost-user socket"),
        "{}",
        o.stderr
    );
}

#[test]
fn bad_vsock_options_and_socket_paths() {
    let kernel = guest("pvh.elf").display().to_string();
    let vsock = |spec: &str| vmm(&["--kernel", &kernel, "--vsock", spec], &[], None);
    for (spec, says) in [
        ("cid=2,uds=/tmp/v.sock", "a guest's CID is a number from 3"),
        (
            "cid=4294967295,uds=/tmp/v.sock",
            "a guest's CID is a number from 3",
        ),
        ("cid=x,uds=/tmp/v.sock", "a guest's CID"),
        ("cid=3", "missing uds=PATH"),
        ("cid=3,uds=/tmp/v.sock,port=1", "unknown vsock option"),
    ] {
        let o = vsock(spec);
        assert_eq!(o.code, Some(2), "--vsock {spec}: {}", o.stderr);
        assert!(o.stderr.contains(says), "--vsock {spec}: {}", o.stderr);
    }
    // A path that is a regular file, in a directory that does not exist, or too long.
    let file = scratch("vsock-is-a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = vsock(&format!("uds={}", file.display()));
    assert_error(&o, 2, "--vsock uds");
    assert!(o.stderr.contains("is not a socket"), "{}", o.stderr);
    assert!(
        file.exists(),
        "vmm must not remove a file it did not create"
    );
    let o = vsock("uds=/nonexistent/dir/v.sock");
    assert_error(&o, 2, "the directory /nonexistent/dir does not exist");
    let o = vsock(&format!("uds=/tmp/{}", "x".repeat(120)));
    assert_error(&o, 2, "a Unix socket's path at most");
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_fifo_as_kernel_or_disk_is_refused_at_once() {
    let fifo = scratch("errors-fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path; the result is checked.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.display().to_string();
    // Before, open(2) waited for a writer: vmm hung here, deaf to SIGTERM.
    let o = vmm(&["--kernel", &fifo], &[], None);
    assert_error(&o, 2, "cannot open the kernel");
    assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);
    let kernel = guest("pvh.elf").display().to_string();
    for drive in [format!("path={fifo},ro"), format!("path={fifo}")] {
        let o = vmm(&["--kernel", &kernel, "--drive", &drive], &[], None);
        assert_error(&o, 2, "cannot use the disk image");
        assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);
    }
    let _ = std::fs::remove_file(&fifo);
}

#[test]
fn unusable_disk_images() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(
        &["--kernel", &kernel, "--rootfs", "/nonexistent/root.img"],
        &[],
        None,
    );
    assert_error(&o, 2, "cannot use the disk image /nonexistent/root.img");
    assert!(
        o.stderr.contains("caused by: cannot open it"),
        "{}",
        o.stderr
    );
    let dir = std::env::temp_dir().display().to_string();
    let o = vmm(
        &["--kernel", &kernel, "--drive", &format!("path={dir},ro")],
        &[],
        None,
    );
    assert_error(&o, 2, &format!("cannot use the disk image {dir}"));
    assert!(o.stderr.contains("not a regular file"), "{}", o.stderr);
    // A character device is no disk (a block device is: tests/blk_kvm.rs).
    let o = vmm(
        &["--kernel", &kernel, "--drive", "path=/dev/null"],
        &[],
        None,
    );
    assert_error(&o, 2, "cannot use the disk image /dev/null");
    assert!(
        o.stderr.contains("not a regular file or a block device"),
        "{}",
        o.stderr
    );
    if is_root() {
        // Readable by its owner only: nobody cannot open it.
        let img = public_vmm().parent().unwrap().join("private.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bin_kernel = public_vmm().parent().unwrap().join("pvh.elf");
        std::fs::copy(guest("pvh.elf"), &bin_kernel).unwrap();
        std::fs::set_permissions(&bin_kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = vmm(
            &[
                "--kernel",
                &bin_kernel.display().to_string(),
                "--rootfs",
                &img.display().to_string(),
            ],
            &[],
            Some(NOBODY),
        );
        assert_error(&o, 2, "cannot use the disk image");
        assert!(o.stderr.contains("Permission denied"), "{}", o.stderr);
    }
}

#[test]
fn restore_of_a_directory_that_is_no_snapshot() {
    let o = vmm(&["--restore", "/nonexistent/snapshot"], &[], None);
    assert_error(&o, 2, "cannot restore the snapshot");
    assert!(
        o.stderr
            .contains("caused by: cannot read /nonexistent/snapshot/state"),
        "{}",
        o.stderr
    );
    // A file that is not a state file: named as such, once.
    let dir = std::env::temp_dir().join(format!("vmm-errors-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state"), b"#!/bin/sh\n").unwrap();
    let o = vmm(&["--restore", dir.to_str().unwrap()], &[], None);
    assert_error(&o, 2, "cannot restore the snapshot");
    assert_eq!(
        o.stderr.matches("not a vmm snapshot state file").count(),
        1,
        "{}",
        o.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--jail` mistakes are usage errors (exit 2), found before anything is opened.
#[test]
fn jail_mistakes_are_clear_errors() {
    let kernel = guest("pvh.elf").display().to_string();
    let o = vmm(
        &["--kernel", &kernel, "--jail", "/nonexistent-jail"],
        &[],
        None,
    );
    assert_error(
        &o,
        2,
        "--jail /nonexistent-jail: not a directory vmm can use",
    );
    let o = vmm(&["--kernel", &kernel, "--jail", &kernel], &[], None);
    assert_error(&o, 2, "not a directory vmm can use");
    if is_root() {
        let o = vmm(&["--kernel", &kernel, "--jail", "/tmp"], &[], Some(NOBODY));
        assert_error(&o, 2, "--jail needs root");
    }
    let o = vmm(&["--kernel", &kernel, "--jail-uid", "5"], &[], None);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--jail <DIR>"), "{}", o.stderr);
    let jail = scratch("errors-jail");
    std::fs::create_dir_all(&jail).unwrap();
    let jail = jail.display().to_string();
    let o = vmm(
        &[
            "--kernel",
            &kernel,
            "--jail",
            &jail,
            "--vsock",
            "uds=/tmp/j.sock",
        ],
        &[],
        None,
    );
    if is_root() {
        assert_error(
            &o,
            2,
            &format!("with --jail {jail}, --vsock uds /tmp/j.sock must be inside {jail}"),
        );
    }
}
