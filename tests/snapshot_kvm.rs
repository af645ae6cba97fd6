//! Snapshot and restore end to end: the PVH test guest (`test=lines`, `test=blklines`) is
//! paused and snapshotted through the API (real `curl`), the VMM killed, and a new VMM process
//! started with `--restore` continues it; corrupt and mismatched snapshots are refused with exit
//! code 2 before any guest code runs. The tests need /dev/kvm: where the build found none, the
//! runner reports them as ignored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::api::{curl, error_of, json, socket_path, vmm_args, ApiVm, LIMIT};

/// A fresh, absent directory for a snapshot.
fn snapshot_dir(name: &str) -> PathBuf {
    let dir = common::scratch(&format!("snapshot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn restore(name: &str, dir: &Path, extra: &[&str]) -> ApiVm {
    let sock = socket_path(name);
    let mut args = vec![
        "--restore".to_string(),
        dir.display().to_string(),
        "--api-socket".to_string(),
        sock.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ApiVm::spawn(sock, &args)
}

/// Pauses `vm`, snapshots it into `dir` and kills it; returns the API's answer.
fn snapshot_and_kill(vm: ApiVm, dir: &Path) -> serde_json::Value {
    assert_eq!(curl(&vm.sock, "PUT", "/vm/pause", None).0, 204);
    let body = format!(r#"{{"path": "{}"}}"#, dir.display());
    let (code, answer) = curl(&vm.sock, "PUT", "/vm/snapshot", Some(&body));
    assert_eq!(code, 200, "{answer}");
    vm.signal(libc::SIGKILL);
    let _ = vm.wait(LIMIT);
    json(&answer)
}

/// Boots `test=lines`, has it answer two lines, snapshots it into `dir`, kills it.
fn lines_snapshot(name: &str, dir: &Path) -> serde_json::Value {
    let sock = socket_path(name);
    let mut vm = ApiVm::spawn(sock.clone(), &vmm_args(&sock, "test=lines", &[]));
    vm.wait_for("lines: ready\n");
    vm.send(b"alpha\n");
    vm.wait_for("line 1: alpha\n");
    vm.send(b"beta\n");
    vm.wait_for("line 2: beta\n");
    snapshot_and_kill(vm, dir)
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_restored_guest_continues_where_it_was_paused() {
    let dir = snapshot_dir("continue");
    let saved = lines_snapshot("continue", &dir);
    assert_eq!(saved["memory_bytes"], 32 << 20, "{saved}");
    let data = saved["memory_data_bytes"].as_u64().unwrap();
    assert!(
        data > 0 && data < 8 << 20,
        "holes stay holes: {data} bytes of data in a 32 MiB guest that touched little"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    for file in ["state", "memory"] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
        // Guest RAM and registers: for the owner only, whatever the umask.
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&dir), 0o700, "the snapshot directory vmm made");

    let mut vm = restore("continue-restored", &dir, &[]);
    vm.send(b"gamma\n");
    vm.wait_for("line 3: gamma\n");
    let out = vm.stdout();
    assert!(
        !out.contains("ready") && !out.contains("line 1"),
        "the restored guest started over: {out:?}"
    );
    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!(
        (code, json(&body)["state"].clone()),
        (200, "running".into())
    );
    vm.send(b"quit\n");
    vm.wait_for("lines: done\n");
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn two_vms_restored_from_one_snapshot_run_at_once() {
    let dir = snapshot_dir("twins");
    lines_snapshot("twins", &dir);
    let mut a = restore("twins-a", &dir, &[]);
    let mut b = restore("twins-b", &dir, &[]);
    a.send(b"from a\n");
    b.send(b"from b\n");
    a.wait_for("line 3: from a\n");
    b.wait_for("line 3: from b\n");
    a.send(b"again a\n");
    a.wait_for("line 4: again a\n");
    assert!(!b.stdout().contains("line 4"), "the two guests share state");
    for mut vm in [a, b] {
        vm.send(b"quit\n");
        let (status, stderr) = vm.wait(LIMIT);
        assert_eq!(status, Some(0), "{stderr}");
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn restore_paused_waits_for_resume() {
    let dir = snapshot_dir("paused");
    lines_snapshot("paused", &dir);
    let mut vm = restore("paused-restored", &dir, &["--restore-paused"]);
    let (code, body) = curl(&vm.sock, "GET", "/vm", None);
    assert_eq!((code, json(&body)["state"].clone()), (200, "paused".into()));
    vm.send(b"early\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !vm.stdout().contains("line 3"),
        "a paused VM answered: {:?}",
        vm.stdout()
    );
    assert_eq!(curl(&vm.sock, "PUT", "/vm/resume", None).0, 204);
    vm.wait_for("line 3: early\n");
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn snapshot_requests_that_cannot_work_are_refused_and_the_vm_runs_on() {
    let sock = socket_path("refused");
    let mut vm = ApiVm::spawn(sock.clone(), &vmm_args(&sock, "test=lines", &[]));
    vm.wait_for("lines: ready\n");
    let dir = snapshot_dir("refused");
    let body = format!(r#"{{"path": "{}"}}"#, dir.display());
    let (code, answer) = curl(&sock, "PUT", "/vm/snapshot", Some(&body));
    assert_eq!(code, 400, "{answer}");
    assert!(error_of(&answer).contains("pause it first"), "{answer}");
    assert!(!dir.exists(), "a refused snapshot left {}", dir.display());

    assert_eq!(curl(&sock, "PUT", "/vm/pause", None).0, 204);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"mine").unwrap();
    let (code, answer) = curl(&sock, "PUT", "/vm/snapshot", Some(&body));
    assert_eq!(code, 400, "{answer}");
    assert!(
        error_of(&answer).contains("not an empty directory"),
        "{answer}"
    );
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"mine");
    for bad in [
        "",
        "{}",
        r#"{"path": 7}"#,
        r#"{"path": "/tmp/x", "extra": 1}"#,
    ] {
        let (code, answer) = curl(&sock, "PUT", "/vm/snapshot", Some(bad));
        assert_eq!(code, 400, "{bad:?}: {answer}");
        assert!(error_of(&answer).contains("\"path\""), "{answer}");
    }
    assert_eq!(curl(&sock, "GET", "/vm/snapshot", None).0, 405);

    assert_eq!(curl(&sock, "PUT", "/vm/resume", None).0, 204);
    vm.send(b"still here\n");
    vm.wait_for("line 1: still here\n");
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
}

/// Runs `vmm --restore dir`: its exit code, stdout and stderr.
fn restore_once(dir: &Path) -> (Option<i32>, String, String) {
    let run = common::run_vmm(&["--restore", &dir.display().to_string()], b"", LIMIT);
    (run.code(), run.stdout_str(), run.stderr)
}

fn copy_snapshot(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for file in ["state", "memory"] {
        // cp keeps the memory file sparse.
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(from.join(file))
            .arg(to.join(file))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn assert_refused(dir: &Path, what: &str, reason: &str) {
    let (code, stdout, stderr) = restore_once(dir);
    assert_eq!(code, Some(2), "{what}: stderr {stderr}");
    assert!(stderr.contains(reason), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(stdout.is_empty(), "{what}: the guest ran: {stdout:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn corrupt_truncated_and_mismatched_snapshots_are_clear_errors() {
    let good = snapshot_dir("corrupt-good");
    lines_snapshot("corrupt-good", &good);
    let state = std::fs::read(good.join("state")).unwrap();
    let bad = snapshot_dir("corrupt-bad");

    // Truncated at many offsets: in the header, in the payload, one byte short.
    let mut cuts: Vec<usize> = vec![0, 1, 7, 8, 12, 20, 23, 24, 25, state.len() - 1];
    cuts.extend((1..8).map(|i| state.len() * i / 8));
    for cut in cuts {
        copy_snapshot(&good, &bad);
        std::fs::write(bad.join("state"), &state[..cut]).unwrap();
        assert_refused(&bad, &format!("state cut at {cut}"), "truncated");
    }
    // Random byte flips anywhere in the state file (a fixed-seed xorshift, so a failure
    // reproduces).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % state.len() as u64) as usize;
        let flip = ((x >> 32) as u8) | 1;
        let mut corrupt = state.clone();
        corrupt[at] ^= flip;
        copy_snapshot(&good, &bad);
        std::fs::write(bad.join("state"), &corrupt).unwrap();
        let reason = match at {
            0..8 => "no VMMSNAP magic",
            8..12 => "format version",
            12..20 => "than its header says",
            _ => "checksum does not match",
        };
        let reason = if (12..20).contains(&at) {
            // A length that grows says "truncated"/"implausible", one that shrinks "longer".
            "cannot restore the snapshot"
        } else {
            reason
        };
        assert_refused(&bad, &format!("byte {at} ^ {flip:#x}"), reason);
    }
    // Another format version is named.
    let mut other = state.clone();
    other[8..12].copy_from_slice(&99u32.to_le_bytes());
    copy_snapshot(&good, &bad);
    std::fs::write(bad.join("state"), &other).unwrap();
    assert_refused(&bad, "version 99", "format version 99");
    // The memory file: truncated, missing.
    copy_snapshot(&good, &bad);
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("memory"))
        .unwrap();
    memory.set_len((32 << 20) - 4096).unwrap();
    assert_refused(&bad, "memory truncated", "the memory file holds");
    std::fs::remove_file(bad.join("memory")).unwrap();
    assert_refused(&bad, "memory missing", "memory");
    // Not a snapshot directory at all.
    assert_refused(&snapshot_dir("nothing-here"), "absent", "cannot read");
    // And the good one still restores.
    let mut vm = restore("corrupt-good-restored", &good, &[]);
    vm.send(b"fine\n");
    vm.wait_for("line 3: fine\n");
    vm.signal(libc::SIGTERM);
    assert_eq!(vm.wait(LIMIT).0, Some(0));
}

/// A raw disk image of `sectors` 512-byte sectors, made with the standard `truncate`.
fn disk_image(name: &str, sectors: u64) -> PathBuf {
    let path = common::scratch(&format!("snapshot-{name}.img"));
    let _ = std::fs::remove_file(&path);
    let status = Command::new("truncate")
        .arg("-s")
        .arg((sectors * 512).to_string())
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_restored_disk_continues_its_queue_and_its_writes_reach_the_image() {
    let image = disk_image("blk", 64);
    let drive = format!("path={}", image.display());
    let sock = socket_path("blk");
    let mut vm = ApiVm::spawn(
        sock.clone(),
        &vmm_args(&sock, "test=blklines", &["--drive", &drive]),
    );
    vm.wait_for("blklines: ready\n");
    vm.send(b"w 3 before\n");
    vm.wait_for("blklines: used 1 status 0\n");
    vm.send(b"r 3\n");
    vm.wait_for("blklines: used 2 status 0 data before..........\n");
    let dir = snapshot_dir("blk");
    snapshot_and_kill(vm, &dir);

    let mut vm = restore("blk-restored", &dir, &[]);
    // The queue goes on from the third request: nothing replayed, nothing lost.
    vm.send(b"r 3\n");
    vm.wait_for("blklines: used 3 status 0 data before..........\n");
    vm.send(b"w 5 after restore\n");
    vm.wait_for("blklines: used 4 status 0\n");
    vm.send(b"quit\n");
    vm.wait_for("blklines: done\n");
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[3 * 512..3 * 512 + 6], b"before");
    assert_eq!(&bytes[5 * 512..5 * 512 + 13], b"after restore");

    // A disk replaced by a copy (the same size, another file) is refused, unless the copy is
    // named on purpose with --drive.
    let copy = image.with_extension("copy");
    std::fs::copy(&image, &copy).unwrap();
    std::fs::rename(&copy, &image).unwrap();
    assert_refused(
        &dir,
        "disk replaced",
        "is another file than when the snapshot was taken",
    );
    let mut vm = restore(
        "blk-replaced",
        &dir,
        &["--drive", &format!("path={}", image.display())],
    );
    vm.send(
        b"quit
",
    );
    vm.wait_for(
        "blklines: done
",
    );
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    // A snapshot whose disk changed size is refused (issue 23): it is not the guest's disk.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.set_len(65 * 512).unwrap();
    assert_refused(
        &dir,
        "disk grown",
        &format!(
            "the disk {} is 33280 bytes, but was 32768 bytes when the snapshot was taken",
            image.display()
        ),
    );
    // A snapshot whose disk is gone is refused, naming the disk.
    std::fs::remove_file(&image).unwrap();
    assert_refused(&dir, "disk missing", &image.display().to_string());
}

/// A VM with a shared directory cannot be snapshotted yet (virtiofsd's open files are not
/// carried): the request is refused, saying why, and the VM runs on. The virtiofsd vmm started
/// is listed by `GET /vm` and gone once vmm ends.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_vm_with_a_shared_directory_refuses_snapshots_and_its_virtiofsd_ends_with_it() {
    let shared = snapshot_dir("fs-shared");
    std::fs::create_dir_all(&shared).unwrap();
    let virtiofsd = common::virtiofsd().display().to_string();
    let sock = socket_path("fs-refused");
    let fs = format!("tag=share,path={}", shared.display());
    let args = vmm_args(&sock, "test=lines", &["--fs", &fs]);
    // Where the tests' virtiofsd is (vmm inherits it; no other test here starts one).
    std::env::set_var("VMM_VIRTIOFSD", &virtiofsd);
    let mut vm = ApiVm::spawn(sock.clone(), &args);
    vm.wait_for("lines: ready\n");
    assert_eq!(
        common::virtiofsd_for(&shared).len(),
        1,
        "vmm started one virtiofsd"
    );
    let (code, answer) = curl(&sock, "GET", "/vm", None);
    assert_eq!(code, 200);
    let devices = &json(&answer)["devices"];
    assert_eq!(devices[0]["kind"], "virtio-fs", "{answer}");
    assert_eq!(devices[0]["name"], "share", "{answer}");

    assert_eq!(curl(&sock, "PUT", "/vm/pause", None).0, 204);
    let dir = snapshot_dir("fs-refused");
    let body = format!(r#"{{"path": "{}"}}"#, dir.display());
    let (code, answer) = curl(&sock, "PUT", "/vm/snapshot", Some(&body));
    assert_eq!(code, 400, "{answer}");
    assert!(
        error_of(&answer).contains("shared directory (--fs)"),
        "{answer}"
    );
    assert!(!dir.exists(), "a refused snapshot left {}", dir.display());
    assert_eq!(curl(&sock, "PUT", "/vm/resume", None).0, 204);
    vm.send(b"on\n");
    vm.wait_for("line 1: on\n");
    assert_eq!(curl(&sock, "PUT", "/vm/stop", None).0, 204);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(
        common::virtiofsd_for(&shared),
        Vec::<i32>::new(),
        "virtiofsd outlived vmm"
    );
}

/// Issue 23 (restore overrides; issue 24's clones build on them): two VMs restored at once from
/// one snapshot, each with its own copy of the disk (`--drive path=` with `--restore`), write
/// their own images; the snapshot's image is untouched. A count or mode that does not match
/// the snapshot's disks is refused (exit 2).
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn clones_restored_with_their_own_disks_write_their_own_images() {
    let image = disk_image("clones", 64);
    let drive = format!("path={}", image.display());
    let sock = socket_path("clones");
    let mut vm = ApiVm::spawn(
        sock.clone(),
        &vmm_args(&sock, "test=blklines", &["--drive", &drive]),
    );
    vm.wait_for("blklines: ready\n");
    vm.send(b"w 3 shared\n");
    vm.wait_for("blklines: used 1 status 0\n");
    let dir = snapshot_dir("clones");
    snapshot_and_kill(vm, &dir);
    let original = std::fs::read(&image).unwrap();

    let copies: Vec<PathBuf> = ["b", "c"]
        .iter()
        .map(|name| {
            let copy = common::scratch(&format!("snapshot-clones-{name}.img"));
            std::fs::copy(&image, &copy).unwrap();
            copy
        })
        .collect();
    let mut clones: Vec<ApiVm> = copies
        .iter()
        .enumerate()
        .map(|(i, copy)| {
            restore(
                &format!("clone-{i}"),
                &dir,
                &["--drive", &format!("path={}", copy.display())],
            )
        })
        .collect();
    for (i, clone) in clones.iter_mut().enumerate() {
        clone.send(format!("w 5 clone {i}\nr 3\n").as_bytes());
        clone.wait_for("blklines: used 3 status 0 data shared..........\n");
    }
    for clone in clones.iter_mut() {
        clone.send(b"quit\n");
    }
    for clone in clones {
        let (status, stderr) = clone.wait(LIMIT);
        assert_eq!(status, Some(0), "{stderr}");
    }
    for (i, copy) in copies.iter().enumerate() {
        let bytes = std::fs::read(copy).unwrap();
        assert_eq!(
            &bytes[5 * 512..5 * 512 + 7],
            format!("clone {i}").as_bytes()
        );
        assert_eq!(&bytes[3 * 512..3 * 512 + 6], b"shared");
    }
    assert_eq!(
        std::fs::read(&image).unwrap(),
        original,
        "the snapshot's image changed"
    );

    let restore_with = |extra: &[&str]| {
        let mut args = vec!["--restore".to_string(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_vmm(&args, b"", LIMIT)
    };
    let b = format!("path={}", copies[0].display());
    let run = restore_with(&["--drive", &b, "--drive", &b]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the snapshot has 1 disks and --drive gives 2"),
        "{}",
        run.stderr
    );
    let run = restore_with(&["--drive", &format!("{b},ro")]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("was read-write"), "{}", run.stderr);
    let run = restore_with(&["--net", "tap=vmmnope0"]);
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("the snapshot has 0 network interfaces"),
        "{}",
        run.stderr
    );
}

/// Issue 23: a jailed restore (`--restore DIR --jail J`, as root). The snapshot's files are
/// opened before the jail; then the guest goes on, the API socket is made inside J, a snapshot
/// taken through it lands inside J (written as the jail's user), the vsock socket given inside
/// J (as a host path) takes connections, and both socket files are gone at the end.
#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn a_jailed_restore_goes_on_and_writes_its_snapshots_inside_the_jail() {
    use std::os::unix::fs::MetadataExt;
    let dir = snapshot_dir("jailed");
    let jail = common::jail_dir("snapshot-jail");
    let uds1 = jail.join("v1.sock");
    let sock = socket_path("jailed");
    let mut vm = ApiVm::spawn(
        sock.clone(),
        &vmm_args(
            &sock,
            "test=lines",
            &["--vsock", &format!("uds={}", uds1.display())],
        ),
    );
    vm.wait_for("lines: ready\n");
    vm.send(b"one\n");
    vm.wait_for("line 1: one\n");
    snapshot_and_kill(vm, &dir);
    let _ = std::fs::remove_file(&uds1);

    let api = jail.join("api.sock");
    let uds2 = jail.join("v2.sock");
    let mut vm = ApiVm::spawn(
        api.clone(),
        &[
            "--restore".to_string(),
            dir.display().to_string(),
            "--jail".to_string(),
            jail.display().to_string(),
            "--api-socket".to_string(),
            "/api.sock".to_string(),
            "--vsock".to_string(),
            format!("uds={}", uds2.display()),
        ],
    );
    vm.send(b"two\n");
    vm.wait_for("line 2: two\n");
    assert_eq!(std::fs::symlink_metadata(&api).unwrap().uid(), 65534);
    std::os::unix::net::UnixStream::connect(&uds2).expect("the vsock socket inside the jail");
    assert_eq!(curl(&api, "PUT", "/vm/pause", None).0, 204);
    let (code, answer) = curl(&api, "PUT", "/vm/snapshot", Some(r#"{"path": "/again"}"#));
    assert_eq!(code, 200, "{answer}");
    let state = std::fs::metadata(jail.join("again/state")).expect("the snapshot inside the jail");
    assert_eq!(state.uid(), 65534);
    assert_eq!(curl(&api, "PUT", "/vm/resume", None).0, 204);
    vm.signal(libc::SIGTERM);
    let (status, stderr) = vm.wait(LIMIT);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        !api.exists() && !uds2.exists(),
        "a socket file is left behind"
    );
    let _ = std::fs::remove_dir_all(&jail);
}
