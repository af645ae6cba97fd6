//! virtio-blk end to end: the PVH test guest's minimal virtio-mmio driver (test=blk) finds the
//! disk from the `virtio_mmio.device=` entry on its command line, negotiates, writes a pattern,
//! flushes and reads it back; the host then checks the pattern in the image file.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{guest, run_vmm, spawn};

const LIMIT: Duration = Duration::from_secs(60);
const DISK_BYTES: u64 = 4 << 20;

fn disk(name: &str) -> PathBuf {
    let p = common::scratch(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    p
}

/// Byte i of the guest's write (tests/guests/README.md).
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (usize::from(seed) + i * 7 + i / 512) as u8)
        .collect()
}

/// The VMM's arguments for the PVH test guest with `cmdline`, plus `extra`.
fn blk_args(extra: &[&str], cmdline: &str) -> Vec<String> {
    let kernel = guest("pvh.elf").display().to_string();
    let mut v: Vec<String> = [
        "--kernel",
        kernel.as_str(),
        "--memory",
        "64",
        "--cmdline",
        cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Each of `lines` is a whole line of the guest's output.
fn assert_lines(run: &common::Run, lines: &[&str]) {
    let out = run.stdout_str();
    for line in lines {
        assert!(
            out.lines().any(|l| l == *line),
            "missing {line:?} in:\n{out}\n{}",
            run.stderr
        );
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn guest_writes_flushes_and_reads_back() {
    let img = disk("blk-rw.img");
    let a = blk_args(
        &["--rootfs", &img.display().to_string()],
        "test=blk sector=100 count=16 pattern=0x33",
    );
    let run = run_vmm(&refs(&a), b"", LIMIT);
    let out = run.stdout_str();
    assert!(!run.timed_out, "{out}\n{}", run.stderr);
    // The VMM put the root disk and the device on the command line.
    assert!(out.contains("root=/dev/vda rw"), "{out}");
    assert!(out.contains("virtio_mmio.device=4K@0xd0000000:5"), "{out}");
    assert_lines(
        &run,
        &[
            "blk: capacity 8192 sectors",
            "blk: read-write",
            "blk: write status 0",
            "blk: flush status 0",
            "blk: read status 0",
            "blk: verify ok",
            "blk: past-end status 1",
            "blk: unknown-type status 2",
            "blk: done",
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let data = std::fs::read(&img).unwrap();
    let start = 100 * 512;
    assert_eq!(&data[start..start + 16 * 512], &pattern(0x33, 16 * 512)[..]);
    assert!(
        data[..start].iter().all(|&b| b == 0),
        "bytes before the write changed"
    );
    assert!(
        data[start + 16 * 512..].iter().all(|&b| b == 0),
        "bytes after the write changed"
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn read_only_disk_refuses_writes() {
    let img = disk("blk-ro.img");
    let a = blk_args(
        &[
            "--drive",
            &format!("path={},ro,id=vmm-ro-disk", img.display()),
        ],
        "test=blk",
    );
    let run = run_vmm(&refs(&a), b"", LIMIT);
    let out = run.stdout_str();
    assert!(!run.timed_out, "{out}\n{}", run.stderr);
    assert_lines(
        &run,
        &[
            "blk: read-only",
            "blk: id vmm-ro-disk",
            "blk: write status 1",
            "blk: done",
        ],
    );
    assert!(
        !out.contains("root=/dev/vda"),
        "--drive is not the root disk: {out}"
    );
    assert!(
        std::fs::read(&img).unwrap().iter().all(|&b| b == 0),
        "a read-only image was written"
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn second_drive_is_the_second_device() {
    let (a_img, b_img) = (disk("blk-a.img"), disk("blk-b.img"));
    let a = blk_args(
        &[
            "--rootfs",
            &a_img.display().to_string(),
            "--drive",
            &format!("path={}", b_img.display()),
        ],
        "test=blk blkdev=1 sector=0 count=1 pattern=0x11",
    );
    let run = run_vmm(&refs(&a), b"", LIMIT);
    let out = run.stdout_str();
    assert!(out.contains("virtio_mmio.device=4K@0xd0001000:6"), "{out}");
    assert!(
        out.lines().any(|l| l == "blk: verify ok"),
        "{out}\n{}",
        run.stderr
    );
    assert_eq!(
        &std::fs::read(&b_img).unwrap()[..512],
        &pattern(0x11, 512)[..]
    );
    assert!(
        std::fs::read(&a_img).unwrap().iter().all(|&b| b == 0),
        "wrong disk written"
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn flushed_data_survives_sigkill() {
    let img = disk("blk-kill.img");
    let a = blk_args(
        &["--rootfs", &img.display().to_string()],
        "test=blk sector=7 count=8 pattern=0x77",
    );
    let mut child = spawn(&refs(&a));
    let seen = common::read_until(&mut child, "blk: flush status 0\n", LIMIT);
    assert!(seen.contains("blk: flush status 0\n"), "{seen}");
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[7 * 512..15 * 512], &pattern(0x77, 8 * 512)[..]);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_locked_image_is_refused() {
    let img = disk("blk-locked.img");
    let a = blk_args(&["--rootfs", &img.display().to_string()], "test=halt");
    let mut first = spawn(&refs(&a));
    let seen = common::read_until(&mut first, "halt: ready\n", LIMIT);
    assert!(seen.contains("halt: ready"), "{seen}");
    let second = run_vmm(&refs(&a), b"", LIMIT);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.code(), Some(2), "{}", second.stderr);
    assert!(
        second.stderr.starts_with(&format!(
            "error: cannot use the disk image {}",
            img.display()
        )),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("locked by another process"),
        "{}",
        second.stderr
    );
}

/// Issue 23: a guest that keeps its request queue full without end (`test=blkflood`: every
/// completion is resubmitted at once) does not keep the event loop in the block device: the
/// API answers and SIGTERM ends vmm, each within 2 s.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_guest_that_floods_a_queue_does_not_starve_the_vmm() {
    use common::api::{curl, socket_path, ApiVm};
    let img = disk("blk-flood.img");
    // Large reads: each takes the device longer than the (emulated) guest takes to resubmit.
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let sock = socket_path("blk-flood");
    let a = blk_args(
        &[
            "--rootfs",
            &img.display().to_string(),
            "--cpus",
            "2",
            "--api-socket",
            &sock.display().to_string(),
        ],
        "test=blkflood floodkib=16384",
    );
    let vm = ApiVm::spawn(sock.clone(), &a);
    vm.wait_for("blkflood: flooding\n");
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let (status, body) = curl(&sock, "GET", "/vm", None);
    let answered = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        answered < Duration::from_secs(2),
        "GET /vm took {answered:?} during the flood"
    );
    let start = Instant::now();
    vm.signal(libc::SIGTERM);
    let (code, stderr) = vm.wait(LIMIT);
    let ended = start.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        ended < Duration::from_secs(2),
        "SIGTERM took {ended:?} during the flood"
    );
}

/// Issue 23: a jailed vmm (`--jail DIR`, run as root; tests/net_kvm.rs checks its uid,
/// capabilities and root) still serves its guest's disk: the image was opened before the jail,
/// and the guest's write, flush and read reach it. The API socket is made inside DIR, as the
/// jail's user, and is gone when vmm ends.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_jailed_vmm_serves_its_guests_disk() {
    use std::os::unix::fs::MetadataExt;
    let img = disk("blk-jail.img");
    let dir = common::jail_dir("jail-blk");
    let jail = dir.display().to_string();
    let a = blk_args(
        &[
            "--rootfs",
            &img.display().to_string(),
            "--jail",
            &jail,
            "--api-socket",
            "/api.sock",
        ],
        "test=blklines",
    );
    let mut child = spawn(&refs(&a));
    common::read_until(&mut child, "blklines: ready\n", LIMIT);
    let sock = dir.join("api.sock");
    let meta = std::fs::symlink_metadata(&sock).expect("the API socket inside the jail");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
    let (status, body) = common::api::curl(&sock, "GET", "/vm", None);
    assert_eq!(status, 200, "{body}");
    let run = common::finish(child, b"w 9 jailed write\nr 9\nquit\n", LIMIT);
    let out = run.stdout_str();
    assert!(
        out.contains("blklines: used 2 status 0 data jailed write"),
        "{out}\n{}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let data = std::fs::read(&img).unwrap();
    assert_eq!(&data[9 * 512..9 * 512 + 12], b"jailed write");
    assert!(!sock.exists(), "the API socket is left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 24: a host block device is a drive. A loop device with 4 KiB sectors (`losetup
/// --sector-size 4096`, as root) over an image file: the guest is told its 4 KiB logical block
/// size (`VIRTIO_BLK_F_BLK_SIZE`), its capacity comes from the device, and what the guest writes
/// and flushes is in the file underneath.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_loop_block_device_with_4k_sectors_is_a_drive() {
    use std::process::Command;
    let img = disk("blk-loop.img");
    let out = Command::new("losetup")
        .args(["--find", "--show", "--sector-size", "4096"])
        .arg(&img)
        .output()
        .expect("run losetup (util-linux, as root)");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let a = blk_args(
        &["--rootfs", &device],
        "test=blk sector=104 count=16 pattern=0x44",
    );
    let run = run_vmm(&refs(&a), b"", LIMIT);
    let detached = Command::new("losetup").args(["-d", &device]).status();
    assert_lines(
        &run,
        &[
            "blk: capacity 8192 sectors",
            "blk: block size 4096",
            "blk: write status 0",
            "blk: flush status 0",
            "blk: verify ok",
            "blk: done",
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(detached.unwrap().success());
    let data = std::fs::read(&img).unwrap();
    let start = 104 * 512;
    assert_eq!(&data[start..start + 16 * 512], &pattern(0x44, 16 * 512)[..]);
}
