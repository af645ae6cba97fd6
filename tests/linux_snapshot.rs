//! Snapshot and restore of a real Linux guest (the default kernel and root disk, with
//! virtio-blk and virtio-net), where this host allows a full boot: right here on hardware
//! virtualization, or in the nested test host (see tests/linux.rs). The guest (2 vCPUs, with a
//! vsock device) is booted to a shell that runs each line typed on its console, paused and
//! snapshotted through the API, its VMM killed; a new VMM restores it, and the shell answers the
//! next line, a file it writes reaches the disk image, it pings the host over the same TAP, its
//! vsock connection from before the snapshot is reset and new ones work both ways.
//!
//! The API client in the job is tests/guests/tools/vmm-api.c: the test host has no curl (the
//! API tests on this machine use curl).

mod common;

use std::time::Duration;

use common::guest;
use common::testhost::{self, check_kernel_log, Job, Mode};

const LIMIT: Duration = Duration::from_secs(600);
const JOB_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 loglevel=5";

#[test]
#[cfg_attr(
    all(no_kvm, no_testhost),
    ignore = "needs /dev/kvm or qemu-system-x86_64 (for the nested test host)"
)]
fn linux_restored_from_a_snapshot_answers_writes_its_disk_and_pings() {
    let mode =
        testhost::announce("linux_restored_from_a_snapshot_answers_writes_its_disk_and_pings");
    if let Mode::EarlyBoot(reason) = mode {
        // A snapshot of a guest that stops in early boot proves nothing about Linux; the
        // snapshot tests with the test guests (tests/snapshot_kvm.rs) run everywhere.
        common::say(&format!(
            "linux snapshot test not run: no full Linux boot here ({reason})"
        ));
        return;
    }
    // `eval $line` for each line the console gets; `\$`: the job's shell passes `$` on.
    let shell = "while read line; do eval \\$line; done";
    let until = |file: &str, what: &str| {
        format!(
            "i=0; while ! grep -q {what} {file} && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done"
        )
    };
    let run = Job::new("snapshot")
        .default_guest()
        .file("vmm-api", &guest("vmm-api"))
        .file("vmm-vsock", &common::guest_tool("vmm-vsock"))
        .script(&format!(
            r#"# A vmm that died must not take the script with it (a write to its FIFO would raise
# SIGPIPE before its log is shown).
trap '' PIPE
tunctl -t tap0 >/dev/null && ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up
cp rootfs.ext4 snap.ext4
mkfifo in1 in2
sleep 600 | ./vmm-vsock listen unix:$PWD/v1.sock_6000 >/dev/null 2>&1 &
./vmm --kernel vmlinux --memory 128 --cpus 2 --rootfs snap.ext4 --net tap=tap0 --api-socket api1.sock --vsock cid=3,uds=$PWD/v1.sock --cmdline "{JOB_CMDLINE} vmmcmd=\"{shell}\"" < in1 > before.log 2>&1 &
vmm=$!
exec 3>in1
{wait_start}
echo 'ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up; echo BEFORE-$((6*7))' >&3
{wait_before}
echo 'ping -c 1 -W 5 10.0.2.1 >/dev/null && echo GUEST-PING-BEFORE-OK' >&3
{wait_ping_before}
echo 'vmm-vsock echo-server vsock:5001 >/dev/null & (vmm-vsock connect vsock:2:6000 </dev/null; echo GUEST-OLD-VSOCK-ENDED) & sleep 2; echo VSOCK-READY' >&3
{wait_vsock}
./vmm-api api1.sock PUT /vm/pause
./vmm-api api1.sock PUT /vm/snapshot '{{"path": "/tmp/snap"}}'
kill -KILL $vmm; wait $vmm
echo "VMM-KILLED $?"
exec 3>&-
cat before.log
echo "VMM-BEFORE-END"
ls -ls /tmp/snap
./vmm-vsock echo-server unix:$PWD/v2.sock_6001 >/dev/null &
./vmm --restore /tmp/snap --api-socket api2.sock --vsock uds=$PWD/v2.sock < in2 > after.log 2>&1 &
vmm=$!
exec 4>in2
echo 'echo AFTER-$((6*7)) CPUS-$(cat /sys/devices/system/cpu/online); echo written-after-restore > /root/after; sync; echo SYNCED' >&4
{wait_synced}
echo 'ping -c 2 -W 5 10.0.2.1 >/dev/null && echo GUEST-PING-AFTER-OK' >&4
{wait_ping_after}
ping -c 2 -W 5 10.0.2.15 >/dev/null && echo HOST-PING-AFTER-OK
echo 'echo again | vmm-vsock connect vsock:2:6001 | sed s/^/GUEST-VSOCK-AFTER-/' >&4
{wait_vsock_after}
echo "HOST-VSOCK-AFTER-$(echo back | ./vmm-vsock connect fc:$PWD/v2.sock:5001)"
./vmm-api api2.sock GET /vm
echo 'exit 7' >&4
wait $vmm; rc=$?
exec 4>&-
cat after.log
echo "VMM-EXIT restored $rc"
cp snap.ext4 "$OUT/snap.ext4"
"#,
            wait_start = until("before.log", "VMM-CMD-START"),
            wait_before = until("before.log", "BEFORE-42"),
            wait_ping_before = until("before.log", "GUEST-PING-BEFORE-OK"),
            wait_synced = until("after.log", "SYNCED"),
            wait_ping_after = until("after.log", "GUEST-PING-AFTER-OK"),
            wait_vsock = until("before.log", "VSOCK-READY"),
            wait_vsock_after = until("after.log", "GUEST-VSOCK-AFTER-again"),
        ))
        .run(mode, LIMIT);
    let console = &run.console;
    assert_eq!(run.exit, Some(0), "the job failed:\n{console}");
    // One kernel booted (the restored one continues it): one known XSAVE warning at most.
    check_kernel_log(console, 1);
    let (before, after) = console
        .split_once("VMM-BEFORE-END")
        .unwrap_or_else(|| panic!("no VMM-BEFORE-END:\n{console}"));
    assert!(before.contains("BEFORE-42"), "{before}");
    assert!(before.contains("GUEST-PING-BEFORE-OK"), "{before}");
    assert!(
        before.contains("200 {\"path\""),
        "the snapshot was not written:\n{before}"
    );
    assert!(
        before.contains("VMM-KILLED 137"),
        "vmm was not killed:\n{before}"
    );
    // The restored guest: no new boot, the same shell answers, its disk and network work.
    assert!(
        !after.contains("Linux version") && !after.contains("VMM-ROOTFS-OK"),
        "the restored guest booted again:\n{after}"
    );
    // vsock: the connection the guest had when the snapshot was taken ends (the restored
    // device sent TRANSPORT_RESET), and new ones work both ways on the new socket path.
    for marker in [
        "AFTER-42",
        "SYNCED",
        "GUEST-PING-AFTER-OK",
        "HOST-PING-AFTER-OK",
        "GUEST-OLD-VSOCK-ENDED",
        "GUEST-VSOCK-AFTER-again",
        "HOST-VSOCK-AFTER-back",
    ] {
        assert!(
            after.contains(marker),
            "no {marker} after the restore:\n{after}"
        );
    }
    assert!(after.contains("\"state\":\"running\""), "{after}");
    assert!(after.contains("VMM-CMD-EXIT 7"), "{after}");
    if *mode == Mode::Hardware {
        assert!(
            after.contains("VMM-EXIT restored 7"),
            "the restored guest's exit code did not come through:\n{after}"
        );
    } else {
        // In the test host the restored guest's user-mode port I/O (vmm-exit's `outb` after
        // `ioperm`) faults: KVM reports the task register as a busy TSS (type 11, as the
        // CPU keeps it) and QEMU TCG's I/O permission check accepts only type 9
        // (target/i386/tcg/seg_helper.c, check_io), so the exit code cannot come through
        // there; a real CPU checks the bitmap of a busy TSS. The guest then reboots: 0.
        assert!(after.contains("VMM-EXIT restored 0"), "{after}");
        common::say("nested: the restored guest's exit code is not checked (QEMU TCG's check_io)");
    }
    assert_eq!(
        testhost::read_from_ext4(&run.out.join("snap.ext4"), "/root/after"),
        "written-after-restore\n"
    );
}
