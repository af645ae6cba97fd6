//! A hostile guest (`test=hostile`, tests/guests/hostile.c) against the VMM: for 20 seconds it
//! writes random values to every port and to every register of a read-write disk, a read-only
//! disk, a network interface and a vsock device, feeds them random and adversarial descriptor
//! chains, and sends the vsock device packets with plausible headers and random operations,
//! ports, lengths and credit (a host program listens on port 1024 and reads, so some make
//! connections). The VMM must keep serving the serial console (round after round of the
//! guest's lines arrive, and its last one), keep its memory bounded, leave the read-only image
//! untouched, not flood its log, exit 0 when the guest resets, and remove its vsock socket.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::collect;
use common::{guest, scratch, Netns, TAP};

/// How long the guest attacks before the test asks it to stop.
const ATTACK: Duration = Duration::from_secs(20);
const GUEST_MIB: u64 = 64;
/// What the VMM may hold beyond guest RAM: its own heap, stacks and buffers.
const VMM_OVERHEAD_MIB: u64 = 32;
/// The log a guest may make the VMM write in the whole run (before virtio-queue's messages
/// were turned off, this guest made it write 4 KiB in 12 s).
const MAX_STDERR: usize = 4 << 10;

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

#[test]
#[cfg_attr(
    any(no_kvm, no_netns),
    ignore = "needs a usable /dev/kvm, and root with iproute2 and /dev/net/tun for a network namespace"
)]
fn a_hostile_guest_cannot_take_the_vmm_down() {
    let ns = Netns::create("hostile", None).expect(
        "a network namespace with a TAP (root, iproute2 and /dev/net/tun were there at build time)",
    );
    let disk = scratch("hostile-rw.img");
    let ro_disk = scratch("hostile-ro.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let ro_bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&ro_disk, &ro_bytes).unwrap();

    let uds = scratch("hostile-vsock.sock");
    let _ = std::fs::remove_file(&uds);
    let port_1024_path = format!("{}_1024", uds.display());
    // A run that was killed leaves it behind.
    let _ = std::fs::remove_file(&port_1024_path);
    let port_1024 = std::os::unix::net::UnixListener::bind(&port_1024_path)
        .expect("listen for the guest's connections to port 1024");
    std::thread::spawn(move || {
        for stream in port_1024.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &stream, &mut std::io::sink());
            });
        }
    });

    let kernel = guest("pvh.elf");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(common::vmm_bin())
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", &GUEST_MIB.to_string()])
        .arg("--rootfs")
        .arg(&disk)
        .arg("--drive")
        .arg(format!("path={},ro", ro_disk.display()))
        .args(["--net", &format!("tap={TAP}")])
        .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
        .args(["--cmdline", "test=hostile seed=12345"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `ip netns exec` execs the VMM: the child's pid is the VMM's.
    let pid = child.id();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        collect(child.stdout.take().unwrap(), stdout.clone()),
        collect(child.stderr.take().unwrap(), stderr.clone()),
    ];
    let mut stdin = child.stdin.take().unwrap();

    let start = Instant::now();
    while !text(&stdout).contains("hostile: ready, 4 virtio devices") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the VMM ended before the guest was ready: {}\n{}",
            text(&stdout),
            text(&stderr)
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guest never got ready: {}\n{}",
            text(&stdout),
            text(&stderr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let attack = Instant::now();
    let mut max_rss = 0;
    while attack.elapsed() < ATTACK {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the VMM ended during the attack: {}\n{}",
            text(&stdout),
            text(&stderr)
        );
        max_rss = max_rss.max(vm_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The guest looks for a `q` once per round; random writes to the UART may clear its FIFO,
    // so keep typing until it answers.
    let stop = Instant::now();
    while !text(&stdout).contains("hostile: done") {
        use std::io::Write;
        let _ = stdin.write_all(b"q");
        let _ = stdin.flush();
        max_rss = max_rss.max(vm_rss_kib(pid).unwrap_or(0));
        if stop.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!(
                "the guest never finished its last round: {}\n{}",
                text(&stdout),
                text(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if done.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the VMM did not exit after the guest's reset");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for reader in readers {
        reader.join().unwrap();
    }
    let out = text(&stdout);
    let err = text(&stderr);
    let rounds: Vec<&str> = out
        .lines()
        .filter_map(|l| l.find("hostile: round ").map(|i| &l[i..]))
        .collect();
    eprintln!(
        "hostile: {} rounds, last `{}`; VMM peak RSS {} KiB; {} bytes of log",
        rounds.len(),
        rounds.last().unwrap_or(&""),
        max_rss,
        err.len()
    );

    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    assert!(
        rounds.len() >= 2,
        "the console must keep serving during the attack: {out}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Every round the guest makes each device refuse to start 4 times: one warning per device
    // for the whole run, the rest at debug level.
    let refusals = err.matches("cannot start device").count();
    assert!(
        (1..=4).contains(&refusals),
        "{refusals} start refusals logged (one per device expected): {err}"
    );
    assert!(
        err.len() <= MAX_STDERR,
        "the guest made the VMM write {} bytes of log: {}",
        err.len(),
        &err[..4096.min(err.len())]
    );
    assert!(max_rss > 0, "the VMM's RSS was never read");
    assert!(
        max_rss <= (GUEST_MIB + VMM_OVERHEAD_MIB) << 10,
        "VMM RSS {max_rss} KiB, more than guest RAM + {VMM_OVERHEAD_MIB} MiB"
    );
    assert!(
        std::fs::read(&ro_disk).unwrap() == ro_bytes,
        "the read-only image changed"
    );
    assert!(
        rounds
            .last()
            .is_some_and(|r| !r.ends_with("vsock packets 0")),
        "{out}"
    );
    assert!(!uds.exists(), "vmm left its vsock socket");
}
