//! The control API (`--api-socket`) end to end: real `curl --unix-socket` for the endpoints
//! and their errors, raw `UnixStream`s for the clients that misbehave, the tiny PVH test guest
//! (`test=count`, `test=ports`, …) behind it. The tests that run a VM need /dev/kvm: where the
//! build found none, the runner reports them as ignored.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{curl, curl_args, error_of, json, socket_path, vmm_args, ApiVm, LIMIT};
use common::guest;
/// The server's per-client deadline (`vmm::api::CLIENT_TIMEOUT`).
const CLIENT_TIMEOUT: Duration = vmm::api::CLIENT_TIMEOUT;

fn start(name: &str, cmdline: &str, extra: &[&str]) -> ApiVm {
    start_at(socket_path(name), cmdline, extra)
}

fn start_at(sock: PathBuf, cmdline: &str, extra: &[&str]) -> ApiVm {
    let args = vmm_args(&sock, cmdline, extra);
    ApiVm::spawn(sock, &args)
}

/// The numbers of the complete `count: N` lines.
fn counts(out: &str) -> Vec<u32> {
    let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("count: "))
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("bad line count: {n:?}"))
        })
        .collect()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The process's open fd count once it is `want`, or whatever it is after 5 s.
fn settled_fd_count(pid: u32, want: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = fd_count(pid);
        if n == want || start.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Reads one HTTP response from a raw stream: (status, head, body).
fn read_response(s: &mut UnixStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read a response head");
        assert_eq!(
            n,
            1,
            "EOF inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn raw_connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the server closes; Ok(bytes) on EOF.
fn read_to_eof(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map(|_| rest)
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn get_vm_describes_the_vm_and_the_socket_is_0600() {
    let disk = common::scratch(&format!("api-disk-{}.img", std::process::id()));
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("path={},ro,id=apidisk", disk.display());
    let vm = start("get", "test=halt", &["--cpus", "2", "--drive", &drive]);
    vm.wait_for("halt: ready\n");

    let meta = std::fs::symlink_metadata(&vm.sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of the socket file"
    );

    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["state"], "running");
    assert_eq!(v["vcpus"], 2);
    assert_eq!(v["memory_mib"], 32);
    assert!(v["uptime_ms"].as_u64().is_some(), "{body}");
    assert_eq!(
        v["devices"],
        serde_json::json!([
            {
                "kind": "virtio-blk",
                "name": "vda",
                "path": disk.display().to_string(),
                "read_only": true,
                "id": "apidisk",
            },
            // On by default, after the disks and network interfaces.
            {"kind": "virtio-rng", "name": "virtio_rng.0"},
        ])
    );
    assert!(v["exits"]["total"].as_u64().unwrap() > 0, "{body}");
    assert!(
        v["exits"]["by_reason"]["io-out"].as_u64().unwrap() > 0,
        "{body}"
    );

    let (code, body) = curl(&vm.sock, "GET", "/vm/exits", None);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["per_vcpu"].as_array().unwrap().len(), 2);
    let devices: Vec<String> = v["by_device"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d["bus"].as_str().unwrap(),
                d["device"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "pio:serial",
        "pio:i8042",
        "pio:debug-port",
        "pio:no device",
        "mmio:virtio-blk:vda",
        "mmio:no device",
    ] {
        assert!(devices.iter().any(|d| d == want), "{want} in {devices:?}");
    }
    let (code, _) = curl(&vm.sock, "PUT", "/vm/stop", None);
    assert_eq!(code, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    let _ = std::fs::remove_file(disk);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn pause_stops_the_guest_and_resume_continues_where_it_stopped() {
    // Two vCPUs: the second waits for a SIPI that never comes, inside KVM_RUN, and must be
    // kicked out and parked too.
    let vm = start("pause", "test=count delay=2000", &["--cpus", "2"]);
    vm.wait_for("count: 3\n");

    let start = Instant::now();
    let (code, body) = curl(&vm.sock, "PUT", "/vm/pause", None);
    assert_eq!(code, 204, "{body}");
    common::say(&format!("pause answered in {:?}", start.elapsed()));
    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!((code, json(&body)["state"].clone()), (200, "paused".into()));
    // What the guest wrote before it was parked may still be on its way through the pipe.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = vm.stdout();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vm.stdout(), at_pause, "the guest printed while paused");

    let (code, body) = curl(&vm.sock, "PUT", "/vm/pause", Some("{}"));
    assert_eq!(code, 400, "pausing a paused VM: {body}");
    assert!(error_of(&body).contains("already paused"), "{body}");

    let (code, body) = curl(&vm.sock, "PUT", "/vm/resume", Some("{}"));
    assert_eq!(code, 204, "{body}");
    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!(
        (code, json(&body)["state"].clone()),
        (200, "running".into())
    );
    let last = *counts(&at_pause).last().unwrap();
    vm.wait_for(&format!("count: {}\n", last + 3));
    let numbers = counts(&vm.stdout());
    let expected: Vec<u32> = (0..numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "every number once, in order, across the pause"
    );

    let (code, body) = curl(&vm.sock, "PUT", "/vm/resume", None);
    assert_eq!(code, 400, "resuming a running VM: {body}");
    assert!(error_of(&body).contains("not paused"), "{body}");

    // Stopped while paused: the parked vCPUs are woken and the VMM ends.
    assert_eq!(curl(&vm.sock, "PUT", "/vm/pause", None).0, 204);
    let (code, _) = curl(&vm.sock, "PUT", "/vm/stop", None);
    assert_eq!(code, 204);
    let sock = vm.sock.clone();
    let (status, stderr) = vm.wait(Duration::from_secs(10));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn sigterm_while_paused_ends_with_0() {
    let vm = start("sigterm-paused", "test=count", &["--cpus", "2"]);
    vm.wait_for("count: 1\n");
    assert_eq!(curl(&vm.sock, "PUT", "/vm/pause", None).0, 204);
    vm.signal(libc::SIGTERM);
    let sock = vm.sock.clone();
    let (status, stderr) = vm.wait(Duration::from_secs(10));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(!sock.exists(), "the socket file is removed");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn errors_are_answered_and_the_guest_runs_on() {
    let vm = start("errors", "test=count", &[]);
    vm.wait_for("count: 1\n");
    let s = &vm.sock;

    let (code, body) = curl(s, "GET", "/nothing", None);
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("GET /vm"), "{body}");
    assert_eq!(curl(s, "GET", "/vm/", None).0, 404);

    // 405 names the method that works.
    let (code, head) = curl_args(s, "/vm/pause", &["-i", "-X", "GET"]);
    assert_eq!(code, 405, "{head}");
    assert!(head.contains("\r\nAllow: PUT\r\n"), "{head}");
    let (code, head) = curl_args(s, "/vm", &["-i", "-X", "DELETE"]);
    assert_eq!(code, 405, "{head}");
    assert!(head.contains("\r\nAllow: GET\r\n"), "{head}");

    for bad in ["{", "pause please", r#"{"now": true}"#] {
        let (code, body) = curl(s, "PUT", "/vm/pause", Some(bad));
        assert_eq!(code, 400, "{bad:?}: {body}");
        assert!(error_of(&body).contains("takes no arguments"), "{body}");
    }

    // A body over 64 KiB (curl sends `Expect: 100-continue` first and gets the 400 instead).
    let big = common::scratch(&format!("api-big-{}.json", std::process::id()));
    std::fs::write(&big, vec![b' '; 100 * 1024]).unwrap();
    let at_big = format!("@{}", big.display());
    let (code, body) = curl_args(s, "/vm/pause", &["-X", "PUT", "--data-binary", &at_big]);
    assert_eq!(code, 400, "{body}");
    assert!(error_of(&body).contains("64 KiB"), "{body}");
    let _ = std::fs::remove_file(big);

    let (code, body) = curl_args(
        s,
        "/vm/pause",
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "{}",
        ],
    );
    assert_eq!(code, 411, "{body}");
    assert!(error_of(&body).contains("Content-Length"), "{body}");

    // None of it paused or stopped anything.
    let (code, body) = curl(s, "GET", "/vm", None);
    assert_eq!(
        (code, json(&body)["state"].clone()),
        (200, "running".into())
    );
    let before = counts(&vm.stdout()).len();
    vm.wait_for(&format!("count: {}\n", before + 2));
    assert_eq!(curl(s, "PUT", "/vm/stop", Some("{}")).0, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn clients_that_misbehave_are_dropped_and_others_are_served() {
    let vm = start("bad-clients", "test=count", &[]);
    vm.wait_for("count: 1\n");
    let s = vm.sock.clone();
    let start = Instant::now();

    // One that sends nothing, one that sends half a request.
    let mut silent = raw_connect(&s);
    let mut half = raw_connect(&s);
    half.write_all(b"GET /vm HTTP/1.1\r\nHost: local").unwrap();
    // One that leaves in the middle of its request, and one in the middle of its body.
    let mut gone = raw_connect(&s);
    gone.write_all(b"PUT /vm/pa").unwrap();
    drop(gone);
    let mut gone = raw_connect(&s);
    gone.write_all(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{")
        .unwrap();
    drop(gone);

    // Meanwhile: two at once, interleaved...
    let mut a = raw_connect(&s);
    let mut b = raw_connect(&s);
    a.write_all(b"GET /vm HTTP/1.1\r\nHo").unwrap();
    b.write_all(b"GET /vm/exits HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut b).0, 200);
    a.write_all(b"st: localhost\r\n\r\n").unwrap();
    let (code, _, body) = read_response(&mut a);
    assert_eq!(code, 200);
    assert_eq!(
        json(&body)["state"],
        "running",
        "the cut PUTs paused nothing"
    );
    // ...and one after another, with curl.
    for _ in 0..10 {
        assert_eq!(curl(&s, "GET", "/vm", None).0, 200);
    }
    assert!(
        start.elapsed() < CLIENT_TIMEOUT,
        "the others were served while the bad clients waited: {:?}",
        start.elapsed()
    );

    // A body over 64 KiB from a raw client: it gets the 400, then the end of the stream.
    let mut big = raw_connect(&s);
    big.write_all(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 102400\r\n\r\n")
        .unwrap();
    big.write_all(&vec![b'x'; 100 * 1024]).unwrap();
    let (code, head, body) = read_response(&mut big);
    assert_eq!(code, 400, "{body}");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(read_to_eof(&mut big).is_ok());

    // The silent and the half client are dropped after the timeout: EOF, not a hang.
    assert!(read_to_eof(&mut silent).unwrap().is_empty());
    assert!(read_to_eof(&mut half).unwrap().is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= CLIENT_TIMEOUT - Duration::from_millis(200)
            && waited < CLIENT_TIMEOUT + Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    // And the guest never stopped.
    let (code, body) = curl(&s, "GET", "/vm", None);
    assert_eq!(
        (code, json(&body)["state"].clone()),
        (200, "running".into())
    );
    let before = counts(&vm.stdout()).len();
    vm.wait_for(&format!("count: {}\n", before + 1));
    assert_eq!(curl(&s, "PUT", "/vm/stop", None).0, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_thousand_requests_leave_no_fds_or_threads_behind() {
    let vm = start("thousand", "test=count", &[]);
    vm.wait_for("count: 1\n");
    let pid = vm.pid();
    // The baseline is taken with no client connected. After one request its connection
    // (socket + deadline timer) is gone once the server has seen curl hang up, which can be a
    // moment after curl itself has exited: wait for that rather than race it.
    let (fds, threads) = (fd_count(pid), thread_count(pid));
    assert_eq!(curl(&vm.sock, "GET", "/vm", None).0, 200);
    assert_eq!(
        settled_fd_count(pid, fds),
        fds,
        "open fds after one request"
    );

    let requests = [
        &b"GET /vm HTTP/1.1\r\n\r\n"[..],
        b"GET /vm/exits HTTP/1.1\r\n\r\n",
        b"PUT /vm/resume HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /missing HTTP/1.1\r\n\r\n",
    ];
    let mut keep_alive = raw_connect(&vm.sock);
    for i in 0..1000 {
        let req = requests[i % requests.len()];
        let want = [200, 200, 400, 404][i % requests.len()];
        if i % 2 == 0 {
            keep_alive.write_all(req).unwrap();
            assert_eq!(read_response(&mut keep_alive).0, want, "request {i}");
        } else {
            // A connection of its own, closed by the server after the answer.
            let mut one = raw_connect(&vm.sock);
            let mut with_close = req[..req.len() - 2].to_vec();
            with_close.extend_from_slice(b"Connection: close\r\n\r\n");
            one.write_all(&with_close).unwrap();
            assert_eq!(read_response(&mut one).0, want, "request {i}");
            assert!(read_to_eof(&mut one).unwrap().is_empty());
        }
    }
    drop(keep_alive);
    // The server closes its end once it sees the client's.
    assert_eq!(settled_fd_count(pid, fds), fds, "open fds before and after");
    assert_eq!(thread_count(pid), threads, "threads before and after");
    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!(
        (code, json(&body)["state"].clone()),
        (200, "running".into())
    );
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn exit_statistics_count_exactly_the_guests_port_writes() {
    const WRITES: u64 = 777;
    let vm = start(
        "ports",
        &format!("test=ports writes={WRITES}"),
        &["--exit-stats"],
    );
    vm.wait_for("ports: done\n");
    let (code, body) = curl(&vm.sock, "GET", "/vm/exits", None);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let no_device = v["by_device"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bus"] == "pio" && d["device"] == "no device")
        .unwrap_or_else(|| panic!("no pio 'no device' row: {body}"));
    assert_eq!(no_device["writes"], WRITES, "{body}");
    assert_eq!(no_device["reads"], 0, "{body}");
    let io_out = v["by_reason"]["io-out"]["count"].as_u64().unwrap();
    let serial_writes = v["by_device"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["bus"] == "pio")
        .map(|d| d["writes"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(
        io_out, serial_writes,
        "every io-out is one device's write: {body}"
    );
    assert_eq!(v["total"], v["per_vcpu"][0], "{body}");

    assert_eq!(curl(&vm.sock, "PUT", "/vm/stop", None).0, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    // --exit-stats prints the same counts as a table.
    assert!(stderr.contains("vCPU exits: "), "{stderr}");
    let row = stderr
        .lines()
        .find(|l| l.starts_with("no device") && l.contains(" pio "))
        .unwrap_or_else(|| panic!("no 'no device' row in {stderr}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[..5], ["no", "device", "pio", "0", "777"], "{row}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn exit_stats_without_the_api() {
    let a = [
        "--kernel",
        &guest("pvh.elf").display().to_string(),
        "--memory",
        "32",
        "--cmdline",
        "test=hello",
        "--exit-stats",
    ]
    .map(String::from);
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = common::run_vmm(&args, b"", LIMIT);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let serial = run
        .stderr
        .lines()
        .find(|l| l.starts_with("serial "))
        .unwrap_or_else(|| panic!("no serial row: {}", run.stderr));
    assert!(serial.contains(" pio "), "{serial}");
    assert!(
        run.stderr.lines().any(|l| l.starts_with("i8042 ")),
        "the reset: {}",
        run.stderr
    );
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn the_socket_is_removed_however_the_vmm_ends() {
    // The guest ends the VM itself: i8042 reset, triple fault, and int3 (an emulation failure,
    // exit 1, on PVM hosts; a triple fault elsewhere).
    for test in ["hello", "triple", "int3"] {
        let sock = socket_path(&format!("end-{test}"));
        let args = vmm_args(&sock, &format!("test={test}"), &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = common::run_vmm(&args, b"", LIMIT);
        assert!(!run.timed_out, "{test}: {}", run.stderr);
        assert!(run.code().is_some(), "{test}: {}", run.stderr);
        assert!(!sock.exists(), "{test}: the socket file is left behind");
    }
    // SIGINT.
    let vm = start("end-sigint", "test=spin", &[]);
    vm.wait_for("spin: ready\n");
    vm.signal(libc::SIGINT);
    let sock = vm.sock.clone();
    let (status, stderr) = vm.wait(Duration::from_secs(10));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(!sock.exists(), "SIGINT: the socket file is left behind");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_stale_socket_is_reused() {
    let sock = socket_path("stale");
    // A socket nobody listens on, as a killed VMM leaves it.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let vm = start_at(sock.clone(), "test=halt", &[]);
    assert_eq!(curl(&vm.sock, "GET", "/vm", None).0, 200);
    assert_eq!(curl(&vm.sock, "PUT", "/vm/stop", None).0, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(!sock.exists());
}

/// These fail before KVM is opened: they run on any host.
#[test]
fn an_existing_path_that_is_not_a_stale_socket_is_refused() {
    let run_with = |sock: &Path| {
        let args = vmm_args(sock, "test=hello", &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_vmm(&args, b"", LIMIT)
    };

    let file = socket_path("regular-file");
    std::fs::write(&file, b"precious").unwrap();
    let run = run_with(&file);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().next().unwrap_or_default(),
        format!(
            "error: --api-socket {}: the path exists and is not a socket; remove it or choose \
             another path",
            file.display()
        )
    );
    assert!(run.stdout.is_empty(), "the VM never started");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"precious",
        "the file is left alone"
    );
    std::fs::remove_file(&file).unwrap();

    let live = socket_path("live");
    let _listener = UnixListener::bind(&live).unwrap();
    let run = run_with(&live);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "error: --api-socket {}: another process is listening on this socket",
            live.display()
        )),
        "{}",
        run.stderr
    );
    assert!(live.exists(), "another process's socket is left alone");
    std::fs::remove_file(&live).unwrap();

    let run = run_with(Path::new("/nonexistent-vmm-dir/api.sock"));
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent-vmm-dir does not exist"),
        "{}",
        run.stderr
    );
}
