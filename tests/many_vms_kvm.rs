//! 200 VMs back to back, each with a root disk, a TAP it creates itself and an API socket; every
//! other one is stopped with SIGTERM at a random moment of its life (from the first step of its
//! `main`, so set-up included), the rest
//! run their guest to its reset. Each must exit 0 (within 1 s of its SIGTERM), and afterwards
//! nothing may be left: no TAP in the test's network namespace, no lock on the disk, no socket
//! file, no process.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest, in_netns, scratch, Netns};

const VMS: u32 = 200;
/// The latest SIGTERM, after the spawn: past set-up, into the guest's run.
const LATEST_SIGNAL_US: u32 = 150_000;
const SIGNAL_TO_EXIT: Duration = Duration::from_secs(1);
/// For the VMs whose guest ends by itself (a few ms of guest time; generous for a loaded host).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// xorshift64*, seeded from the clock (the seed is printed, so a failure can be replayed with
/// VMM_MANY_VMS_SEED).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Waits until process `pid` runs vmm's own code: its first step in `main` blocks SIGTERM
/// (`SigBlk` in /proc/PID/status), and it has more than one thread once its vCPUs run. Before
/// that the process is still being spawned (forked, exec'ing, the Rust runtime starting),
/// where SIGTERM's default action ends any program and no program can stop it.
fn wait_until_vmm_runs(pid: u32) {
    const SIGTERM_BIT: u64 = 1 << (libc::SIGTERM - 1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return; // gone: the wait that follows tells how
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let blocked = field("SigBlk:")
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .is_some_and(|mask| mask & SIGTERM_BIT != 0);
        let threads = field("Threads:").and_then(|v| v.parse::<u32>().ok());
        if blocked || threads.is_some_and(|n| n > 1) {
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    panic!("process {pid} never started running vmm");
}

/// Processes running the vmm binary with `marker` on their command line.
fn leftover_processes(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) && !cmdline.contains("many_vms_kvm") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
#[cfg_attr(
    any(no_kvm, no_netns),
    ignore = "needs a usable /dev/kvm, and root with iproute2 and /dev/net/tun for a network namespace"
)]
fn two_hundred_vms_start_and_stop_and_leave_nothing_behind() {
    let ns = Netns::create("many", None)
        .expect("a network namespace (root, iproute2 and /dev/net/tun were there at build time)");
    let seed = std::env::var("VMM_MANY_VMS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("many VMs: seed {seed} (VMM_MANY_VMS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let dir = std::env::temp_dir().join(format!("vmm-many-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = scratch("many-vms.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let kernel = guest("pvh.elf");

    let mut signalled = 0;
    let mut slowest_stop = Duration::ZERO;
    let mut slowest_run = Duration::ZERO;
    for i in 0..VMS {
        let sock = dir.join(format!("vm{i}.sock"));
        let tap = format!("vmmmany{i}");
        let stop_it = i % 2 == 0;
        let cmdline = if stop_it { "test=count" } else { "test=hello" };
        let spawned = Instant::now();
        let mut child = in_netns(&ns.name, || {
            Command::new(common::vmm_bin())
                .arg("--kernel")
                .arg(&kernel)
                .args(["--memory", "16", "--cmdline", cmdline])
                .arg("--rootfs")
                .arg(&disk)
                .args(["--net", &format!("tap={tap}")])
                .arg("--api-socket")
                .arg(&sock)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn vmm")
        });
        let status = if stop_it {
            // One in four in the first 10 ms, where set-up is.
            let latest = if rng.next().is_multiple_of(4) {
                10_000
            } else {
                LATEST_SIGNAL_US
            };
            let delay = Duration::from_micros(u64::from(rng.next() % latest));
            wait_until_vmm_runs(child.id());
            std::thread::sleep(delay.saturating_sub(spawned.elapsed()));
            // SAFETY: sending a signal to our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
            let signalled_at = Instant::now();
            signalled += 1;
            let status = wait_exit(&mut child, SIGNAL_TO_EXIT);
            let took = signalled_at.elapsed();
            assert!(
                status.is_some(),
                "VM {i}: no exit within {SIGNAL_TO_EXIT:?} of SIGTERM sent {delay:?} after its start"
            );
            slowest_stop = slowest_stop.max(took);
            if took > Duration::from_millis(100) {
                eprintln!(
                    "many VMs: VM {i}: SIGTERM {delay:?} after start, exit {took:?} after it"
                );
            }
            status
        } else {
            let status = wait_exit(&mut child, RUN_LIMIT);
            assert!(status.is_some(), "VM {i}: no exit within {RUN_LIMIT:?}");
            slowest_run = slowest_run.max(spawned.elapsed());
            status
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(
            status.unwrap().code(),
            Some(0),
            "VM {i} ({cmdline}{}): {stderr}",
            if stop_it { ", SIGTERM" } else { "" }
        );
    }
    eprintln!(
        "many VMs: {VMS} VMs, {signalled} stopped by SIGTERM (slowest exit after it {slowest_stop:?}), \
         the others ran to their reset (slowest {slowest_run:?})"
    );

    let links = Command::new("ip")
        .args(["-n", &ns.name, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let taps: Vec<&str> = links.lines().filter(|l| l.contains("vmmmany")).collect();
    assert!(taps.is_empty(), "TAPs left behind: {taps:?}");
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    lock.try_lock()
        .expect("the disk image is still locked by someone");
    let sockets: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()) || e.path().exists())
        .map(|e| e.path())
        .collect();
    assert!(sockets.is_empty(), "files left behind: {sockets:?}");
    let procs = leftover_processes(&dir.display().to_string());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
