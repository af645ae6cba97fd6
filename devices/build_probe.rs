// What this host lets the tests do, found out when the crate is built and passed to the code as
// `cfg`s, so that a test which cannot run here is marked `#[ignore]` with the reason and the test
// runner counts it as ignored, not as passed. Shared by the `vmm` and `devices` build scripts
// (`include!`d by both).
//
// - `no_kvm`: `/dev/kvm` cannot be opened for reading and writing.
// - `no_netns`: the tests cannot make a network namespace with a TAP in it: that needs root,
//   `/dev/net/tun` and (for the `vmm` tests, which drive `ip netns`) iproute2's `ip`.
// - `no_testhost`: no `qemu-system-x86_64` to run the nested test host (resources/testhost.sh).
//
// Cargo runs the script again when `/dev/kvm`, `/dev/net/tun` or QEMU changes or goes away,
// and, while one is missing, on every build (a device node that comes back keeps its old mtime, which
// cargo would take for "unchanged").

const KVM_DEVICE: &str = "/dev/kvm";
const TUN_DEVICE: &str = "/dev/net/tun";
const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .is_ok()
}

/// Whether the build runs as root (`Uid:` in /proc/self/status: real, effective, ...).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

fn has_ip_command() -> bool {
    std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Emits the `cfg`s; `netns_needs_ip`: whether this crate's namespace tests use `ip`.
fn probe_test_host(netns_needs_ip: bool) {
    for device in [KVM_DEVICE, TUN_DEVICE, QEMU] {
        if std::path::Path::new(device).exists() {
            println!("cargo::rerun-if-changed={device}");
        } else {
            // A path that never exists: cargo reruns the script on every build.
            println!("cargo::rerun-if-changed={device}.vmm-probe-missing");
        }
    }
    println!("cargo::rustc-check-cfg=cfg(no_kvm)");
    println!("cargo::rustc-check-cfg=cfg(no_netns)");
    println!("cargo::rustc-check-cfg=cfg(no_testhost)");
    if !std::path::Path::new(QEMU).exists() {
        println!("cargo::rustc-cfg=no_testhost");
    }
    if !kvm_usable() {
        println!("cargo::rustc-cfg=no_kvm");
        println!("cargo::warning=no usable {KVM_DEVICE}: the tests that run guests are ignored");
    }
    let netns = is_root()
        && std::path::Path::new(TUN_DEVICE).exists()
        && (!netns_needs_ip || has_ip_command());
    if !netns {
        println!("cargo::rustc-cfg=no_netns");
    }
}
