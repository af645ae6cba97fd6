//! Helpers shared by the integration tests: finding KVM, building the test guests and the
//! default Linux guest, and running the `vmm` binary with a time limit.
#![allow(dead_code)]

pub mod api;
pub mod testhost;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `vmm` binary under test.
pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmm"))
}

/// Prints a line that the test harness does not capture (mode lines must show).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// True when the host's KVM is the PVM software nested hypervisor (guest kernel code is
/// emulated; stock Linux stops in early boot).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Runs `make` for the test guests once per test process (under a file lock, since several
/// test binaries may build at once) and returns the path of `name` (e.g. "pvh.elf").
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let out = root().join("target").join("test-guests");
        std::fs::create_dir_all(&out).expect("create target/test-guests");
        let status = Command::new("flock")
            .arg(out.join(".lock"))
            .arg("make")
            .arg("-s")
            .arg("-C")
            .arg(root().join("tests/guests"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("run make for the test guests (are make, gcc and flock installed?)");
        assert!(status.success(), "building the test guests failed");
        out
    });
    let path = out.join(name);
    assert!(path.exists(), "test guest {} was not built", path.display());
    path
}

/// A path for a test's scratch file `name` (under target/test-scratch, created on demand).
pub fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target").join("test-scratch");
    std::fs::create_dir_all(&dir).expect("create target/test-scratch");
    dir.join(name)
}

/// A fresh, empty directory for `--jail`, owned by the jail's default user (65534) so that
/// the jailed vmm can make its API socket and snapshots in it.
pub fn jail_dir(name: &str) -> PathBuf {
    let dir = scratch(&format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    dir
}

/// The virtiofsd the tests give vmm: `$VMM_VIRTIOFSD`, else the first on `PATH`, else
/// `~/.cargo/bin/virtiofsd`; where there is none, `resources/install-deps.sh` installs it
/// (once per test process, as the other resources/ scripts install what they need).
pub fn virtiofsd() -> PathBuf {
    fn look() -> Option<PathBuf> {
        vmm::virtiofsd::find().ok().or_else(|| {
            let home = std::env::var_os("HOME")?;
            let path = PathBuf::from(home).join(".cargo/bin/virtiofsd");
            path.is_file().then_some(path)
        })
    }
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            look().unwrap_or_else(|| {
                let status = Command::new("bash")
                    .arg(root().join("resources/install-deps.sh"))
                    .status()
                    .expect("run resources/install-deps.sh");
                assert!(status.success(), "resources/install-deps.sh failed");
                look().expect("virtiofsd after resources/install-deps.sh")
            })
        })
        .clone()
}

/// The pids of the virtiofsd processes serving `dir` (found by their command line).
pub fn virtiofsd_for(dir: &Path) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("shared-dir {}", dir.display())])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// vmm-run's guest init (resources/guest-tools/vmm-init.c), built into the cache.
pub fn vmm_init() -> PathBuf {
    guest_tool("vmm-init")
}

/// A static tool of resources/guest-tools (`NAME.c`), built into the cache: for a test's host
/// side (vmm-vsock) or a guest's init.
pub fn guest_tool(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}/resources/lib.sh' && guest_tool {name}",
            root().display()
        ))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("build {name}: {e}"));
    assert!(out.status.success(), "building {name} failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

/// Runs a resources/ script that prints the path of what it built (cached between runs).
pub fn resource(script: &str) -> PathBuf {
    let output = Command::new("bash")
        .arg(root().join("resources").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run resources/{script}: {e}"));
    assert!(output.status.success(), "resources/{script} failed");
    let path = String::from_utf8(output.stdout).expect("utf-8 path");
    PathBuf::from(path.trim())
}

/// What a finished (or killed) VMM run left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Starts the VMM with `args`; stdin is a pipe.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm")
}

/// Runs the VMM with `args`, feeding `input` on stdin, killing it after `limit`.
pub fn run_vmm(args: &[&str], input: &[u8], limit: Duration) -> Run {
    let child = spawn(args);
    finish(child, input, limit)
}

/// Feeds `input` to a started VMM, then waits for it (killing it after `limit`).
pub fn finish(mut child: Child, input: &[u8], limit: Duration) -> Run {
    let start = Instant::now();
    let stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
            // Keep stdin open a moment: EOF is not what the test is about.
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = String::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_string(&mut buf);
        }
        buf
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vmm") {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed vmm");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let _ = writer.join();
    Run {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out,
        elapsed,
    }
}

/// Reads the child's stdout until `needle` appears or `limit` passes; returns what was read.
/// The stream stays with the child, so `finish` can read the rest afterwards.
pub fn read_until(child: &mut Child, needle: &str, limit: Duration) -> String {
    use std::os::fd::AsRawFd;
    let stdout = child.stdout.as_mut().expect("stdout");
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if ready <= 0 {
            continue;
        }
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The TAP interface that `Netns` creates.
pub const TAP: &str = "vmmtap0";

/// A network namespace with a persistent TAP in it, removed on drop.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Netns {
    /// Creates the namespace with the TAP up in it (and `host_addr`, e.g. "10.0.2.1/24", on
    /// the TAP); None when that is not possible here (not root, no iproute2 or TUN).
    pub fn create(tag: &str, host_addr: Option<&str>) -> Option<Netns> {
        let name = format!("vmmtest-{tag}-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns { name };
        let n = ns.name.as_str();
        let ok = ip(&["-n", n, "link", "set", "lo", "up"])
            && ip(&["-n", n, "tuntap", "add", "dev", TAP, "mode", "tap"])
            && ip(&["-n", n, "link", "set", TAP, "up"])
            && Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    n,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            && host_addr.is_none_or(|a| ip(&["-n", n, "addr", "add", a, "dev", TAP]));
        ok.then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name]);
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (sockets it opens stay there).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let ns_path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns_file = std::fs::File::open(&ns_path).unwrap();
            // SAFETY: setns on a namespace descriptor; affects only this thread.
            let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}
