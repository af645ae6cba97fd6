//! Running vmm with its control API up, and talking to it with `curl --unix-socket`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// vmm's arguments for the PVH test guest with `cmdline`, 32 MiB and its API on `sock`, then
/// `extra`.
pub fn vmm_args(sock: &Path, cmdline: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kernel",
        &super::guest("pvh.elf").display().to_string(),
        "--memory",
        "32",
        "--cmdline",
        cmdline,
        "--api-socket",
        &sock.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// How long the helpers wait for the VM.
pub const LIMIT: Duration = Duration::from_secs(60);

pub fn socket_path(name: &str) -> PathBuf {
    // /tmp rather than target/: a socket's path has at most 107 bytes.
    let path = std::env::temp_dir().join(format!("vmm-api-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A running VMM with its API socket up; stdout and stderr are collected as they come.
pub struct ApiVm {
    pub child: Child,
    pub sock: PathBuf,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

pub fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl ApiVm {
    /// Runs vmm with `args` (which include `--api-socket sock`), stdin piped, and waits for
    /// the socket to come up.
    pub fn spawn(sock: PathBuf, args: &[String]) -> ApiVm {
        let mut child = Command::new(super::vmm_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let vm = ApiVm {
            child,
            sock,
            stdout,
            stderr,
            readers,
        };
        vm.wait_ready()
    }

    /// Types `bytes` on the VMM's stdin.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn wait_ready(mut self) -> ApiVm {
        let start = Instant::now();
        while UnixStream::connect(&self.sock).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vmm exited ({status}) before its API socket came up: {}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < LIMIT,
                "the API socket never came up; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the guest has printed `needle`.
    pub fn wait_for(&self, needle: &str) {
        let start = Instant::now();
        while !self.stdout().contains(needle) {
            assert!(
                start.elapsed() < LIMIT,
                "the guest never printed {needle:?}; stdout: {:?}, stderr: {}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the VMM to end (killing it after `limit`): its exit code and stderr.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "vmm did not end within {limit:?}; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status.code(), self.stderr())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// `curl --unix-socket`: the status code and the body.
pub fn curl(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut args = vec!["-X", method];
    if let Some(body) = body {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    curl_args(sock, path, &args)
}

pub fn curl_args(sock: &Path, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(sock)
        .args(extra)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl (resources/install-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl gave no status: {text:?}, {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

pub fn error_of(body: &str) -> String {
    json(body)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
        .to_string()
}
