//! Where the Linux tests run a real Linux guest to userspace, and how.
//!
//! - **hardware**: this host's KVM is hardware virtualization (no `/sys/module/kvm_pvm`): the
//!   job runs right here, as root in a network namespace of its own.
//! - **nested**: everywhere else that QEMU is installed: the job runs inside the test host
//!   (`resources/testhost.sh`), a Linux VM under QEMU TCG whose kernel has a kvm-amd
//!   `/dev/kvm`; what it leaves in `$OUT` comes back as files.
//! - **early-boot**: neither can run, but KVM exists (a PVM host without QEMU): only the early
//!   boot of the guest can be checked.
//!
//! A job is a shell script that runs in a directory holding the files it was given (the `vmm`
//! binary included), with `OUT` naming a directory for files to check afterwards. Every test
//! prints its mode as one line: `linux test mode: …`. `VMM_LINUX_TEST_MODE=nested` (or
//! `hardware`) overrides the choice.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{host_is_pvm, resource, root, say, vmm_bin};

/// Where a Linux test runs its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Hardware,
    Nested,
    EarlyBoot(String),
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn qemu_usable() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// This host's mode, decided once per test process.
pub fn mode() -> &'static Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    MODE.get_or_init(|| {
        // For running the nested path on a hardware host too (or forcing either anywhere).
        match std::env::var("VMM_LINUX_TEST_MODE").as_deref() {
            Ok("hardware") => return Mode::Hardware,
            Ok("nested") => return Mode::Nested,
            _ => {}
        }
        if kvm_usable() && !host_is_pvm() {
            Mode::Hardware
        } else if qemu_usable() {
            Mode::Nested
        } else if kvm_usable() {
            Mode::EarlyBoot(
                "KVM here is PVM, which stops a stock kernel in early boot, and \
                 qemu-system-x86_64 (for the nested test host) is not installed"
                    .into(),
            )
        } else {
            Mode::EarlyBoot("no usable /dev/kvm and no qemu-system-x86_64".into())
        }
    })
}

/// Prints the mode line for `test` and returns the mode.
pub fn announce(test: &str) -> &'static Mode {
    let mode = mode();
    let line = match mode {
        Mode::Hardware => "linux test mode: hardware".to_string(),
        Mode::Nested => "linux test mode: nested".to_string(),
        Mode::EarlyBoot(reason) => format!("linux test mode: early-boot ({reason})"),
    };
    say(&format!("{line} [{test}]"));
    mode
}

/// A job: a script and the files it needs.
pub struct Job {
    name: String,
    dir: PathBuf,
    script: String,
}

/// What a job left: its console (stdout), its exit code, and the files it put in `$OUT`.
#[derive(Debug)]
pub struct JobRun {
    pub console: String,
    pub exit: Option<i32>,
    pub out: PathBuf,
    pub elapsed: Duration,
}

impl Job {
    /// A job named `name` (its files go under target/test-scratch/job-NAME); it has the
    /// `vmm` binary under test as `./vmm`.
    pub fn new(name: &str) -> Job {
        let dir = root()
            .join("target/test-scratch")
            .join(format!("job-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the job directory");
        let job = Job {
            name: name.to_string(),
            dir,
            script: String::new(),
        };
        job.file("vmm", &vmm_bin())
    }

    /// Gives the job `src` as `./name` (a copy: the job may change it).
    pub fn file(self, name: &str, src: &Path) -> Job {
        std::fs::copy(src, self.dir.join(name))
            .unwrap_or_else(|e| panic!("copy {} into the job: {e}", src.display()));
        self
    }

    /// Gives the job the dynamically linked program `src` as `./name`, a script that runs it
    /// with the shared libraries `ldd` names (copied into `./lib`) through their own loader:
    /// the test host has only what its initramfs packs.
    pub fn program_with_libs(self, name: &str, src: &Path) -> Job {
        let lib = self.dir.join("lib");
        std::fs::create_dir_all(&lib).expect("create the job's lib directory");
        let ldd = std::process::Command::new("ldd")
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("ldd {}: {e}", src.display()));
        let mut loader = None;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                let file = Path::new(path).file_name().expect("a library file name");
                std::fs::copy(path, lib.join(file))
                    .unwrap_or_else(|e| panic!("copy {path} into the job: {e}"));
                if path.contains("ld-linux") {
                    loader = Some(file.to_string_lossy().into_owned());
                }
            }
        }
        let loader = loader.expect("ldd names the dynamic loader");
        let job = self.file(&format!("{name}.bin"), src);
        let wrapper = job.dir.join(name);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nd=$(cd \"$(dirname \"$0\")\" && pwd)\n\
                 exec \"$d/lib/{loader}\" --library-path \"$d/lib\" \"$d/{name}.bin\" \"$@\"\n"
            ),
        )
        .expect("write the wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("make the wrapper executable");
        job
    }

    /// The default guest's files: `bzImage`, `vmlinux`, `initramfs.cpio.gz`, `rootfs.ext4`.
    pub fn default_guest(self) -> Job {
        let kernel = resource("build-kernel.sh");
        self.file("bzImage", &kernel.join("bzImage"))
            .file("vmlinux", &kernel.join("vmlinux"))
            .file("initramfs.cpio.gz", &resource("build-initramfs.sh"))
            .file("rootfs.ext4", &resource("build-rootfs.sh"))
    }

    /// The job's shell script (POSIX sh; busybox in the test host).
    pub fn script(mut self, script: &str) -> Job {
        self.script = script.to_string();
        self
    }

    /// Runs the job where `mode` says, killing it after `limit`.
    pub fn run(self, mode: &Mode, limit: Duration) -> JobRun {
        std::fs::write(self.dir.join("job.sh"), &self.script).expect("write job.sh");
        let out = self.dir.with_file_name(format!("job-{}-out", self.name));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("create the job's output directory");
        let start = Instant::now();
        let (console, exit) = match mode {
            Mode::Hardware => self.run_here(&out, limit),
            Mode::Nested => self.run_nested(&out, limit),
            Mode::EarlyBoot(_) => panic!("a job needs the hardware or nested mode"),
        };
        // Kept for a reader: what the job printed, next to what it left.
        let _ = std::fs::write(
            self.dir
                .with_file_name(format!("job-{}.console", self.name)),
            &console,
        );
        JobRun {
            console,
            exit,
            out,
            elapsed: start.elapsed(),
        }
    }

    /// Hardware mode: the script runs here, with its own network and PID namespaces (so its
    /// TAP and its `pidof` see only the job) and busybox's applets first in `PATH`, as in the
    /// test host.
    fn run_here(&self, out: &Path, limit: Duration) -> (String, Option<i32>) {
        let bin = self.dir.join("bin");
        std::fs::create_dir_all(&bin).expect("create the job's bin directory");
        let list = Command::new("busybox")
            .arg("--list")
            .output()
            .expect("run busybox (Debian's busybox-static) for the job's tools");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let _ = std::os::unix::fs::symlink("/bin/busybox", bin.join(applet));
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("timeout");
        cmd.arg(limit.as_secs().to_string())
            .args(["unshare", "--net", "--pid", "--fork", "--mount-proc"])
            .args(["sh", "-c", "ip link set lo up; sh ./job.sh"])
            .current_dir(&self.dir)
            .env("OUT", out)
            .env("PATH", path);
        let output = cmd.output().expect("run the job (timeout, unshare, sh)");
        let console = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (console, output.status.code())
    }

    /// Nested mode: the script runs in the test host; `$OUT` comes back through a disk.
    fn run_nested(&self, out: &Path, limit: Duration) -> (String, Option<i32>) {
        let results = self
            .dir
            .with_file_name(format!("job-{}-results.tar", self.name));
        let file = std::fs::File::create(&results).expect("create the results disk");
        // Room for what jobs copy out (disk images of 16 MiB and their logs).
        file.set_len(256 << 20).expect("size the results disk");
        drop(file);
        // A test-host boot now and then goes quiet under TCG and stays so (seen in CI here:
        // no output for 9 minutes, mid-job), reports a soft lockup, or its machine resets
        // before the job ends (seen once in CI here: QEMU exited 0 seconds after the job's
        // first guest started, with no panic on the console). Such a boot is run again from
        // the start.
        let mut attempt = 1;
        let (console, status) = loop {
            let (console, status, stuck) = run_testhost(&self.dir, &results, limit);
            let reset = status.success()
                && !console.contains("TESTHOST-JOB-EXIT")
                && !console.contains("TESTHOST-NO-KVM");
            if !(stuck || reset) || attempt == TESTHOST_ATTEMPTS {
                break (console, status);
            }
            // Kept for a reader: where the boot stopped (the next boot's console replaces
            // job-NAME.console).
            let kept = self
                .dir
                .with_file_name(format!("job-{}.lost-{attempt}.console", self.name));
            let _ = std::fs::write(&kept, &console);
            let what = if !stuck {
                "reset before its job ended".to_string()
            } else if console.contains(LOCKUP) {
                "reported a soft lockup".to_string()
            } else {
                format!("went quiet for {QUIET_LIMIT:?}")
            };
            super::say(&format!(
                "the test host for job {} {what} (its console: {}); running it again",
                self.name,
                kept.display()
            ));
            attempt += 1;
        };
        assert!(
            status.success(),
            "the test host failed (exit {:?}):\n{console}",
            status.code()
        );
        assert!(
            !console.contains("TESTHOST-NO-KVM"),
            "the test host's kernel got no /dev/kvm:\n{console}"
        );
        let exit = console
            .lines()
            .find_map(|l| l.trim().strip_prefix("TESTHOST-JOB-EXIT "))
            .and_then(|code| code.trim().parse().ok());
        let untar = Command::new("tar")
            .arg("-xf")
            .arg(&results)
            .arg("-C")
            .arg(out)
            .status()
            .expect("run tar");
        assert!(untar.success(), "cannot unpack the job's results");
        let _ = std::fs::remove_file(&results);
        (console, exit)
    }
}

/// The contents of `file` in the ext4 image `image`, read with e2fsprogs' `debugfs` (no
/// mount, no root needed).
pub fn read_from_ext4(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How long a test host may print nothing before its boot counts as stuck.
const QUIET_LIMIT: Duration = Duration::from_secs(240);
/// What the test host's kernel prints when one of its CPUs has been stuck in it: its boot
/// counts as stuck too (bench/nested.py saw the QEMU inside L1 spin in `KVM_RUN` for minutes,
/// deaf to SIGKILL, while these reports kept the console from going quiet).
const LOCKUP: &str = "watchdog: BUG: soft lockup";
/// Boots of the test host per job, at most (the first, and one after each that went quiet or
/// reset; CI here has seen two quiet boots in a row once, in the benchmark's smoke run).
const TESTHOST_ATTEMPTS: u32 = 3;

/// One run of resources/testhost.sh for the job in `dir`, killed after `limit`, or once it has
/// printed nothing for [`QUIET_LIMIT`] or reported a [`LOCKUP`] before the job ended: its
/// console, its exit status, and whether it was stuck.
fn run_testhost(
    dir: &Path,
    results: &Path,
    limit: Duration,
) -> (String, std::process::ExitStatus, bool) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};

    let mut child = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .arg("bash")
        .arg(root().join("resources/testhost.sh"))
        .arg(dir)
        .arg(results)
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run resources/testhost.sh");
    let output = Arc::new(Mutex::new((Vec::new(), Instant::now())));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut out = output.lock().unwrap();
                out.0.extend_from_slice(&buf[..n]);
                out.1 = Instant::now();
            }
        })
    };
    let mut stuck_at_end = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the test host") {
            break status;
        }
        let (stuck, ended) = {
            let out = output.lock().unwrap();
            let text = String::from_utf8_lossy(&out.0);
            (
                out.1.elapsed() > QUIET_LIMIT || text.contains(LOCKUP),
                text.contains("TESTHOST-JOB-EXIT"),
            )
        };
        if stuck && !ended {
            stuck_at_end = true;
            // SAFETY: a signal to the process group of our own child (timeout, bash, QEMU).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            break child.wait().expect("wait for the test host");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = reader.join();
    let console = String::from_utf8_lossy(&output.lock().unwrap().0).into_owned();
    (console, status, stuck_at_end)
}

/// Checks a guest kernel log: no `BUG:`, `Oops` or `WARNING:` line, but one known warning per
/// boot in the nested test host: `XSAVE consistency problem`, from TCG's xsave emulation
/// (every VMM's guest prints it there). `boots` is how many guest kernels the log holds.
pub fn check_kernel_log(console: &str, boots: usize) {
    let lines: Vec<&str> = console.lines().collect();
    let mut xsave = 0;
    for (i, line) in lines.iter().enumerate() {
        if !(line.contains("BUG:") || line.contains("Oops") || line.contains("WARNING:")) {
            continue;
        }
        let known = line.contains("WARNING:")
            && *mode() == Mode::Nested
            && i > 0
            && lines[i - 1].contains("XSAVE consistency problem");
        if known && xsave < boots {
            xsave += 1;
            continue;
        }
        let context = lines[i.saturating_sub(5)..(i + 15).min(lines.len())].join("\n");
        panic!("the guest kernel log has a bad line:\n{line}\n---- around it ----\n{context}");
    }
}
