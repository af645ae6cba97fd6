#!/usr/bin/env python3
"""Benchmark in the test host: vmm against QEMU microvm, both on the same L1's kvm-amd.

Boots the test host (resources/testhost.sh: a Linux VM under QEMU TCG whose kernel has a
kvm-amd /dev/kvm) and inside it runs RUNS alternating rounds of vmm and of QEMU
microvm (this machine's qemu-system-x86_64 and its shared libraries, copied in and started
through their own dynamic loader). Every guest gets 128 MiB and 1 vCPU. Prints a Markdown
table like bench/compare.py's (median (min–max) per VMM, ratio of medians vmm/QEMU), then
each run's spawn time with vmm's own --timings breakdown (kernel and initrd copied, first
vCPU entry, first serial byte, in ms since vmm started) and the guest's /proc/uptime at
/init (the guest's own clock, which is unreliable that early under nested TCG: under QEMU
the printk timestamps even stand still for a while; so it is shown per run, for vmm's runs
against each other, and not compared in the table). Rows:

  spawn        spawn → `VMM-INIT-OK` on the guest console: the PVH vmlinux and the default
               initramfs (resources/build-initramfs.sh), cmdline `console=ttyS0 reboot=k
               panic=-1 quiet`; timed in L1 by bench/nested/spawn-until.c (CLOCK_MONOTONIC)
  blk-*        virtio-blk through the Linux driver: the root disk (resources/build-rootfs.sh,
               with bench/nested/iobench.c added) plus a raw data disk of BLK_MB MiB
               (/dev/vdb, a file in L1's tmpfs); in the guest `iobench blk` with O_DIRECT,
               one request in flight: sequential write of BLK_MB MiB in 1 MiB requests and
               fdatasync, sequential read of it back, then BLK_OPS 4 KiB reads at
               pseudo-random offsets; timed in the guest (kvm-clock)
  net-rx       TCP L1 → guest over virtio-net and a TAP in L1 (10.0.2.1/24): the guest GETs a
               NET_MB MiB file from busybox httpd in L1 (`iobench get`, connect to EOF)
  net-tx       TCP guest → L1: the guest sends NET_TX_MB MiB to `iobench sink` in L1, waits
               for it to close (`iobench put`)
  The blk and net rows come from one root-disk boot per VMM and run.
  fs-true      (--only fs) spawn → the output of `true; echo FS-TRUE-DONE` run by
               resources/vmm-run's init, with L1's root as the guest's root on virtio-fs
               (read-only) and a working directory shared writable: vmm with its --fs
               (starting virtiofsd itself), QEMU with vhost-user-fs-device, guest RAM a shared
               memfd, and the same virtiofsd started by the timed command
  vsock-*      (--only vsock) the default initramfs with --vsock (vmm) or vhost-vsock-device
               (QEMU, L1's vhost_vsock): VSOCK_MB MiB guest → host (timed by the sink in L1,
               first byte to end), then host → guest (timed in L1, connect to the guest's
               close), then 1-byte round trips to an echo server in the guest (median),
               with resources/guest-tools/vmm-vsock.c on both sides
  fs-*, ext4-* (--only fsio) the same boot (root on virtio-fs) runs `iobench fs` (bench/nested/
               iobench.c) on data `iobench mktree` made: 2,000 files of 1-16 KiB read
               (tree: walk, open, read, close), a 64 MiB file read and its SHA-256 checked
               (big: time in read(2)), 64 MiB written and fsync()ed (write); fs-* on the
               writable virtio-fs share (the data made in L1's tmpfs at each test-host
               boot), ext4-* for context on an ext4 image with the same files (made on this
               machine with mkfs.ext4 -d, in L1's tmpfs) as a virtio-blk disk, mounted in
               the guest; timed in the guest (kvm-clock)
  shell-*      vmm alone (a table of its own; --only snap): cold boot of the root disk →
               the output of the command its init's shell runs (vmmcmd `echo SNAP-$((6*7))`),
               against restore of a snapshot of that shell waiting for a line (vmmcmd a loop
               that runs each line it reads): spawn of `vmm --restore` with the same command
               already waiting on its stdin → its output. The
               snapshot is taken once per test-host boot (PUT /vm/pause, PUT /vm/snapshot
               through tests/guests/tools/vmm-api.c: no curl in L1), each restore runs on a
               fresh copy of the disk as it was then.

QEMU's flags: -M microvm,x-option-roms=off,rtc=off,isa-serial=on,pic=off,pit=off,acpi=off
-enable-kvm -cpu host (compare.py's, with -cpu host), -device i8042 and -no-reboot so the
guest's reset ends it, -L with just qboot.rom, virtio-mmio.force-legacy=false, vhost=off.

Runs go PER_BOOT to a test-host boot (each boot first does one warm-up spawn of each VMM,
not counted); a boot whose console goes quiet for STALL seconds is stopped and run again.

The test host's kernel gets L1_ARGS (default `init_on_free=1`: it zeroes memory as it frees
it). Without it each run paid for the one before, at random: under TCG, writing to L1 memory
that code ran from makes QEMU drop its translations of that code first, and the memory the
last guest ran from is what the next run gets. Measured in L1: 12 MB written by a program took
70 ms; 190-800 ms right after a VM had run; 1.1-6.6 s right after a program had run code from
8 MiB and freed it (70 ms when it had only written them); vmm's kernel copy took 0.1-1.1 s; a
guest's first touch of one 2 MiB page stalled it 0.37 s (L1's kvm_exit trace). With it, that
cost comes when the memory is freed, at the end of the run that used it (after its
VMM-INIT-OK), so each run starts on clean memory, the same for both VMMs. `--l1-args ""`
measures without it.

Usage: bench/nested.py [--runs N] [--per-boot N] [--only spawn,io,snap,fs,fsio] [--vmm PATH] [--keep DIR]
                       [--l1-args ARGS]
"""

import argparse
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "bench", "nested")
MEM_MIB = 128
GUEST_MAC = "52:54:00:12:34:56"
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet"
QEMU_BIN = "/usr/bin/qemu-system-x86_64"
QEMU_FIRMWARE = ["/usr/share/qemu/qboot.rom"]  # microvm's BIOS (bios-microvm.bin links to it)

# The job, run by busybox sh in L1 (in /job, OUT=/out). @NAME@ are filled in below.
JOB = r"""#!/bin/sh
FIRST=@FIRST@
LAST=@LAST@
ONLY="@ONLY@"
C="@CMDLINE@"
MEM=@MEM@
Q="./lib/ld-linux-x86-64.so.2 --library-path ./lib ./qemu-system-x86_64 -L ./fw"
QM="-M microvm,x-option-roms=off,rtc=off,isa-serial=on,pic=off,pit=off,acpi=off -enable-kvm -cpu host -smp 1 -m $MEM -nodefaults -no-user-config -display none -serial stdio -no-reboot -device i8042"
QV="-global virtio-mmio.force-legacy=false"
# Every kernel message to the console: a soft lockup in L1 shows its trace (see --stall).
echo 8 > /proc/sys/kernel/printk
echo "BENCH-L1 $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled) cmdline=$(cat /proc/cmdline)"
echo "BENCH-QEMU $($Q --version | head -1)"

tunctl -t tap0 >/dev/null && ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up
mkdir -p www && dd if=/dev/urandom of=www/blob bs=1M count=@NET_MB@ 2>/dev/null
httpd -p 10.0.2.1:8080 -h www
dd if=/dev/zero of=data.img bs=1M count=@BLK_MB@ 2>/dev/null
GUESTCMD="ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up; iobench blk /dev/vdb @BLK_MB@ 1024 @BLK_OPS@; iobench get 10.0.2.1 8080 blob; iobench put 10.0.2.1 9000 @NET_TX_MB@"

spawn() {  # spawn VMM RUN
    log=$OUT/spawn-$1-$2
    if [ $1 = vmm ]; then
        t=$(./spawn-until -o $log.log -t 120 VMM-INIT-OK ./vmm --timings --kernel vmlinux \
            --initrd initramfs.cpio.gz --memory $MEM --cpus 1 --cmdline "$C" 2>$log.err)
    else
        t=$(./spawn-until -o $log.log -t 120 VMM-INIT-OK $Q $QM -kernel vmlinux \
            -initrd initramfs.cpio.gz -append "$C" 2>$log.err)
    fi
    rc=$?
    echo "BENCH $1 $2 spawn $t rc=$rc $(grep -a -o 'VMM-INIT-OK uptime=[0-9.]*' $log.log)"
}

# The fs rows: a VM whose root is L1's root on virtio-fs (read-only) and whose working directory
# is shared writable, as resources/vmm-run does; QEMU with the same virtiofsd (started by the
# timed command, as vmm starts its own), guest RAM a shared memfd.
hex() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
mkdir -p fswork/mnt
case ",$ONLY," in *,fsio,*) ./iobench mktree fswork/data @FS_FILES@ @FS_MB@ | sed 's/^/BENCH-DATA /' ;; esac
fsboot() {  # fsboot VMM LOG NEEDLE COMMAND [DISK]: spawn-until's output; DISK is /dev/vda
    FSC="$C root=hostroot rootfstype=virtiofs ro init=/job/vmm-init vmm.cwd=$(hex /job/fswork) vmm.cmd=$(hex "$4")"
    if [ $1 = vmm ]; then
        VMM_VIRTIOFSD=/job/virtiofsd ./spawn-until -o $2.log -t 300 $3 ./vmm \
            --kernel vmlinux --memory $MEM --cpus 1 --fs tag=hostroot,path=/,ro \
            --fs tag=cwd,path=/job/fswork ${5:+--drive path=$5} --cmdline "$FSC" 2>$2.err
    else
        rm -f /tmp/fs-root.sock /tmp/fs-cwd.sock
        ./spawn-until -o $2.log -t 300 $3 sh -c "
            ./virtiofsd --socket-path /tmp/fs-root.sock --shared-dir / --readonly --sandbox chroot --log-level error &
            ./virtiofsd --socket-path /tmp/fs-cwd.sock --shared-dir /job/fswork --sandbox chroot --log-level error &
            while [ ! -S /tmp/fs-root.sock ] || [ ! -S /tmp/fs-cwd.sock ]; do :; done
            exec $Q $QM $QV -object memory-backend-memfd,id=mem,size=${MEM}M,share=on \
                -machine memory-backend=mem \
                -chardev socket,id=c1,path=/tmp/fs-root.sock -device vhost-user-fs-device,chardev=c1,tag=hostroot \
                -chardev socket,id=c2,path=/tmp/fs-cwd.sock -device vhost-user-fs-device,chardev=c2,tag=cwd \
                ${5:+-drive id=d0,file=$5,format=raw,if=none -device virtio-blk-device,drive=d0} \
                -kernel vmlinux -append '$FSC'" 2>$2.err
    fi
}
fsrun() {  # fsrun VMM RUN: spawn → `true` ran
    t=$(fsboot $1 $OUT/fs-$1-$2 FS-TRUE-DONE 'true; echo FS-TRUE-DONE')
    echo "BENCH $1 $2 fs-true $t rc=$?"
}
fsio() {  # fsio VMM RUN fs|ext4 [TRY]: iobench fs on the virtio-fs share, or on ext4 virtio-blk
    log=$OUT/fsio-$3-$1-$2${4:+-retry}
    if [ $3 = fs ]; then
        fsboot $1 $log FS-IO-DONE "/job/iobench fs /job/fswork/data @FS_MB@; echo FS-IO-DONE" >/dev/null
    else
        fsboot $1 $log FS-IO-DONE "mount -t ext4 /dev/vda /job/fswork/mnt && /job/iobench fs /job/fswork/mnt @FS_MB@; umount /job/fswork/mnt; echo FS-IO-DONE" data.ext4 >/dev/null
    fi
    rc=$?
    line=$(tr -d '\r' < $log.log | grep -a '^IOBENCH fs')
    if [ $rc != 0 ] || [ -z "$line" ]; then
        # Seen with both VMMs in L1: a guest that resets at once, printing nothing (QEMU ends
        # with 0; vmm reports a triple fault), or one that hangs. Tried once more; then this
        # boot's results are dropped and it is run again (see --retries).
        echo "BENCH-FAILED $1 $2 fsio on=$3 rc=$rc"; tail -c 2000 $log.log; cat $log.err
        [ -z "$4" ] && { fsio $1 $2 $3 retry; return; }
        exit 1
    fi
    echo "BENCH $1 $2 fsio rc=$rc on=$3 $line"
}

# The vsock rows: the guest (the default initramfs, which has vmm-vsock) runs an echo server on
# port 5001 and a sink on port 5000, and sends VSOCK_MB MiB to the host's sink on port 6000;
# then the host sends VSOCK_MB MiB to the guest's sink and makes 1-byte round trips. vmm through
# its --vsock Unix sockets, QEMU through vhost-vsock (L1's vhost_vsock, AF_VSOCK in L1).
VGCMD="vmm-vsock echo-server vsock:5001 >/dev/null & vmm-vsock sink vsock:5000 >/dev/null & sleep 1; vmm-vsock send vsock:2:6000 @VSOCK_MB@ >/dev/null; echo VSOCK-GUEST-SENT; sleep 600"
vsockrun() {  # vsockrun VMM RUN
    log=$OUT/vsock-$1-$2
    rm -f /tmp/vs.sock /tmp/vs.sock_6000
    if [ $1 = vmm ]; then
        ./vmm-vsock sink unix:/tmp/vs.sock_6000 > $log.sink &
        ./vmm --kernel vmlinux --initrd initramfs.cpio.gz --memory $MEM --cpus 1 \
            --vsock cid=3,uds=/tmp/vs.sock --cmdline "$C vmmcmd=\"$VGCMD\"" > $log.log 2>$log.err &
        to=fc:/tmp/vs.sock
    else
        ./vmm-vsock sink vsock:6000 > $log.sink &
        $Q $QM $QV -device vhost-vsock-device,guest-cid=3 -kernel vmlinux \
            -initrd initramfs.cpio.gz -append "$C vmmcmd=\"$VGCMD\"" > $log.log 2>$log.err &
        to=vsock:3
    fi
    vm=$!
    w=0; while ! grep -q VSOCK-GUEST-SENT $log.log && [ $w -lt 600 ]; do sleep 0.2; w=$((w+1)); done
    echo "BENCH $1 $2 vsock $(cat $log.sink | grep VSOCK-SINK) dir=g2h"
    echo "BENCH $1 $2 vsock $(./vmm-vsock send $to:5000 @VSOCK_MB@) dir=h2g"
    echo "BENCH $1 $2 vsock $(./vmm-vsock rr $to:5001 @VSOCK_RR@)"
    kill -KILL $vm; wait $vm 2>/dev/null
}

SHELL="while read line; do eval \$line; done"

shell_boot() {  # shell_boot RUN: vmm, the root disk booted to a shell that runs one command
    log=$OUT/shell-boot-$1
    cp rootfs.ext4 shell.img
    t=$(./spawn-until -o $log.log -t 120 SNAP-42 ./vmm --kernel vmlinux --memory $MEM --cpus 1 \
        --rootfs shell.img --cmdline "$C vmmcmd=\"echo SNAP-\$((6*7))\"" </dev/null 2>$log.err)
    echo "BENCH vmm $1 shell-boot $t"
}

snap_take() {  # the snapshot of a shell waiting for a line, once per test-host boot
    cp rootfs.ext4 snap.img
    mkfifo snap.in
    ./vmm --kernel vmlinux --memory $MEM --cpus 1 --rootfs snap.img --api-socket snap.sock \
        --cmdline "$C vmmcmd=\"$SHELL\"" < snap.in > $OUT/snap-take.log 2>&1 &
    v=$!
    exec 5>snap.in
    i=0; while ! grep -q VMM-CMD-START $OUT/snap-take.log && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
    sleep 1
    ./vmm-api snap.sock PUT /vm/pause > /dev/null
    ./vmm-api snap.sock PUT /vm/snapshot '{"path": "snapdir"}' >> $OUT/snap-take.log
    kill -KILL $v; wait $v 2>/dev/null
    exec 5>&-
    cp snap.img snap.orig
}

snap_restore() {  # snap_restore RUN: the shell restored, a command waiting on its stdin
    log=$OUT/snap-restore-$1
    cp snap.orig snap.img
    t=$(echo 'echo SNAP-$((6*7)); exit 0' | ./spawn-until -o $log.log -t 120 SNAP-42 \
        ./vmm --timings --restore snapdir 2>$log.err)
    echo "BENCH vmm $1 snap-restore $t"
}

io() {  # io VMM RUN
    log=$OUT/io-$1-$2
    cp rootfs.ext4 root.img
    ./iobench sink 9000 > sink.log &
    sink=$!
    if [ $1 = vmm ]; then
        ./spawn-until -o $log.log -t 300 VMM-CMD-EXIT ./vmm --kernel vmlinux --memory $MEM \
            --cpus 1 --rootfs root.img --drive path=data.img --net tap=tap0,mac=@MAC@ \
            --cmdline "$C vmmcmd=\"$GUESTCMD\"" >/dev/null 2>$log.err
    else
        ./spawn-until -o $log.log -t 300 VMM-CMD-EXIT $Q $QM $QV \
            -drive id=d0,file=root.img,format=raw,if=none -device virtio-blk-device,drive=d0 \
            -drive id=d1,file=data.img,format=raw,if=none -device virtio-blk-device,drive=d1 \
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
            -device virtio-net-device,netdev=n0,mac=@MAC@ \
            -kernel vmlinux -append "$C root=/dev/vda rw vmmcmd=\"$GUESTCMD\"" \
            >/dev/null 2>$log.err
    fi
    rc=$?
    kill $sink 2>/dev/null; wait $sink 2>/dev/null
    tr -d '\r' < $log.log | grep -a '^IOBENCH' | while read -r line; do
        echo "BENCH $1 $2 io rc=$rc $line"
    done
    grep -a 'IOBENCH' sink.log | sed "s/^/BENCH $1 $2 io rc=$rc /"
}

# Warm-up, not counted (run 0): the first boot of each VMM in a fresh test host also pays
# for TCG translating its code and for L1's first page faults.
for v in vmm qemu; do
    case ",$ONLY," in *,spawn,*) spawn $v 0 ;; esac
    case ",$ONLY," in *,fs,*|*,fsio,*) fsrun $v 0 ;; esac
done
case ",$ONLY," in *,snap,*) snap_take; shell_boot 0; snap_restore 0 ;; esac
i=$FIRST
while [ $i -le $LAST ]; do
    # Alternate which VMM goes first, so neither always runs on a warmer machine.
    if [ $((i % 2)) = 1 ]; then order="vmm qemu"; else order="qemu vmm"; fi
    for v in $order; do
        case ",$ONLY," in *,spawn,*) spawn $v $i ;; esac
    done
    for v in $order; do
        case ",$ONLY," in *,io,*) io $v $i ;; esac
    done
    for v in $order; do
        case ",$ONLY," in *,fs,*) fsrun $v $i ;; esac
    done
    for v in $order; do
        case ",$ONLY," in *,vsock,*) vsockrun $v $i ;; esac
    done
    for kind in fs ext4; do
        for v in $order; do
            case ",$ONLY," in *,fsio,*) fsio $v $i $kind ;; esac
        done
    done
    case ",$ONLY," in *,snap,*)
        if [ $((i % 2)) = 1 ]; then shell_boot $i; snap_restore $i
        else snap_restore $i; shell_boot $i; fi ;;
    esac
    echo "BENCH-RUN $i done $(cut -d' ' -f1 /proc/uptime)"
    i=$((i + 1))
done
"""


def resource(script):
    out = subprocess.run(["bash", os.path.join(ROOT, "resources", script)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def copy_libs(binary, job):
    """Every shared library `ldd` lists for `binary` (the loader too) into the job's lib/."""
    ldd = subprocess.run(["ldd", binary], check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in ldd.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            path = m.group(1)
            shutil.copy(os.path.realpath(path), os.path.join(job, "lib", os.path.basename(path)))


def copy_qemu(job):
    """QEMU, every shared library ldd lists (the loader too), and the firmware microvm needs."""
    os.makedirs(os.path.join(job, "lib"))
    os.makedirs(os.path.join(job, "fw"))
    shutil.copy(QEMU_BIN, job)
    copy_libs(QEMU_BIN, job)
    for fw in QEMU_FIRMWARE:
        shutil.copy(os.path.realpath(fw), os.path.join(job, "fw", os.path.basename(fw)))


def build_job(job, args):
    for name in ("spawn-until", "iobench"):
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", os.path.join(job, name),
                        os.path.join(HERE, f"{name}.c")], check=True)
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", os.path.join(job, "vmm-vsock"),
                    os.path.join(ROOT, "resources", "guest-tools", "vmm-vsock.c")], check=True)
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", os.path.join(job, "vmm-api"),
                    os.path.join(ROOT, "tests", "guests", "tools", "vmm-api.c")], check=True)
    shutil.copy(args.vmm, os.path.join(job, "vmm"))
    shutil.copy(os.path.join(resource("build-kernel.sh"), "vmlinux"), job)
    shutil.copy(resource("build-initramfs.sh"), os.path.join(job, "initramfs.cpio.gz"))
    # The root disk with iobench in /bin (debugfs: no mount, no root needed).
    rootfs = os.path.join(job, "rootfs.ext4")
    shutil.copy(resource("build-rootfs.sh"), rootfs)
    subprocess.run(["debugfs", "-w", "-R", f"write {os.path.join(job, 'iobench')} /bin/iobench",
                    rootfs], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["debugfs", "-w", "-R", "set_inode_field /bin/iobench mode 0100755", rootfs],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    copy_qemu(job)
    only = args.only.split(",")
    if "fs" in only or "fsio" in only:
        copy_virtiofsd(job)
    if "fsio" in only:
        args.fs_sha256 = make_ext4(job, args)


def make_ext4(job, args):
    """data.ext4 for the ext4 fsio row: mkfs.ext4 -d of the tree and file `iobench mktree`
    makes (the same bytes it makes in L1 for the virtio-fs row), with room for the 64 MiB
    write. Returns the big file's SHA-256, which every guest's read must match."""
    tmp = tempfile.mkdtemp(prefix="vmm-fsdata.")
    try:
        out = subprocess.run([os.path.join(job, "iobench"), "mktree", os.path.join(tmp, "d"),
                              str(args.fs_files), str(args.fs_mb)], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        size = 2 * args.fs_mb + args.fs_files * 20 // 1024 + 48
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", os.path.join(tmp, "d"),
                        os.path.join(job, "data.ext4"), f"{size}M"], check=True)
        return re.search(r"sha256=(\w+)", out).group(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_virtiofsd(job):
    """virtiofsd (vmm's --fs back end, and QEMU's), its libraries into lib/, a wrapper that
    starts it through their loader, and vmm-run's guest init."""
    out = subprocess.run(["bash", "-c", f". '{ROOT}/resources/lib.sh' && vmm_init"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    shutil.copy(out, os.path.join(job, "vmm-init"))
    binary = shutil.which("virtiofsd") or os.path.expanduser("~/.cargo/bin/virtiofsd")
    shutil.copy(binary, os.path.join(job, "virtiofsd.bin"))
    copy_libs(binary, job)
    wrapper = os.path.join(job, "virtiofsd")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\nexec /job/lib/ld-linux-x86-64.so.2 --library-path /job/lib '
                '/job/virtiofsd.bin "$@"\n')
    os.chmod(wrapper, 0o755)


def write_job_script(job, args, first, last):
    script = JOB
    for key, value in {"FIRST": first, "LAST": last, "ONLY": args.only, "CMDLINE": CMDLINE,
                       "MEM": MEM_MIB, "BLK_MB": args.blk_mb, "BLK_OPS": args.blk_ops,
                       "NET_MB": args.net_mb, "NET_TX_MB": args.net_tx_mb, "MAC": GUEST_MAC,
                       "FS_FILES": args.fs_files, "FS_MB": args.fs_mb,
                       "VSOCK_MB": args.vsock_mb, "VSOCK_RR": args.vsock_rr}.items():
        script = script.replace(f"@{key}@", str(value))
    with open(os.path.join(job, "job.sh"), "w") as f:
        f.write(script)


def parse(console, args):
    """{vmm|qemu: {row: [values]}}, per-run spawn details, and the L1 description lines."""
    results = {"vmm": {}, "qemu": {}}
    spawns = []
    info = []
    add = lambda name, key, value: results[name].setdefault(key, []).append(value)
    for line in console.splitlines():
        line = line.strip()
        if line.startswith(("BENCH-L1 ", "BENCH-QEMU ")):
            info.append(line)
        if not line.startswith("BENCH "):
            continue
        f = line.split()
        name, run, kind = f[1], int(f[2]), f[3]
        if run < 1:
            continue  # a warm-up run
        if kind == "spawn":
            found_ns, rc = int(f[4]), f[6]
            if found_ns < 0 or rc != "rc=0":
                raise RuntimeError(f"a spawn run failed: {line}")
            up = [x.split("=", 1)[1] for x in f[7:] if x.startswith("uptime=")]
            uptime = float(up[0]) if up else None
            add(name, "spawn", found_ns / 1e6)
            spawns.append((name, run, found_ns / 1e6, uptime))
        elif kind == "fs-true":
            found_ns = int(f[4])
            if found_ns < 0 or f[6] != "rc=0":
                raise RuntimeError(f"an fs run failed: {line}")
            add(name, kind, found_ns / 1e6)
        elif kind == "fsio":
            kv = dict(x.split("=", 1) for x in f[4:] if "=" in x)
            want = {"rc": "0", "files": str(args.fs_files), "big_bytes": str(args.fs_mb << 20),
                    "sha256": args.fs_sha256}
            if any(kv.get(k) != v for k, v in want.items()):
                raise RuntimeError(f"an fsio run failed or read wrong data: {line}")
            on = kv["on"]
            add(name, f"{on}-tree", int(kv["tree_ns"]) / 1e6)
            add(name, f"{on}-big", args.fs_mb / (int(kv["big_ns"]) / 1e9))
            add(name, f"{on}-write", int(kv["write_mib"]) / (int(kv["write_ns"]) / 1e9))
        elif kind == "vsock":
            kv = dict(x.split("=", 1) for x in f[4:] if "=" in x)
            if "median_ns" in kv:
                add(name, "vsock-rr", int(kv["median_ns"]) / 1e3)
            elif "bytes" in kv and int(kv["bytes"]) == args.vsock_mb << 20:
                mibs = args.vsock_mb / (int(kv["ns"]) / 1e9)
                add(name, f"vsock-{kv['dir']}", mibs)
            else:
                # Counted and shown, not averaged: seen when L1 itself broke down mid-run.
                add(name, "vsock-failed", line)
        elif kind in ("shell-boot", "snap-restore"):
            found_ns = int(f[4])
            if found_ns < 0:
                raise RuntimeError(f"a {kind} run failed: {line}")
            add(name, kind, found_ns / 1e6)
        elif kind == "io":
            kv = dict(x.split("=", 1) for x in f[4:] if "=" in x)
            if kv["rc"] != "0":
                raise RuntimeError(f"an io run failed: {line}")
            what = f[6]
            if what == "blk":
                if kv["errors"] != "0":
                    raise RuntimeError(f"iobench blk reported errors: {line}")
                mib, ops = int(kv["mib"]), int(kv["ops"])
                add(name, "blk-write", mib / (int(kv["write_ns"]) / 1e9))
                add(name, "blk-read", mib / (int(kv["read_ns"]) / 1e9))
                add(name, "blk-4k", ops / (int(kv["rand_ns"]) / 1e9))
            elif what in ("get", "put"):
                add(name, "net-rx" if what == "get" else "net-tx",
                    int(kv["bytes"]) / (1 << 20) / (int(kv["ns"]) / 1e9))
            elif what == "sink":
                add(name, "sink-bytes", int(kv["bytes"]))
    return results, spawns, info


def vmm_timeline(path):
    """{phase: ms} from one vmm --timings stderr file."""
    marks = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"\[vmm +([0-9.]+) ms\] (.*)", line)
                if m:
                    marks.setdefault(m.group(2).strip(), float(m.group(1)))
    except FileNotFoundError:
        pass
    return marks


ROWS = [
    ("spawn", "spawn → `VMM-INIT-OK` (PVH vmlinux + initramfs, `quiet`)", "ms"),
    ("blk-write", "virtio-blk sequential write + fdatasync, 1 MiB O_DIRECT", "MiB/s"),
    ("blk-read", "virtio-blk sequential read, 1 MiB O_DIRECT", "MiB/s"),
    ("blk-4k", "virtio-blk 4 KiB random reads, O_DIRECT, 1 in flight", "req/s"),
    ("net-rx", "TCP L1 → guest (HTTP GET from busybox httpd)", "MiB/s"),
    ("net-tx", "TCP guest → L1", "MiB/s"),
    ("fs-true", "spawn → `true` ran, L1's root as the guest's root on virtio-fs (virtiofsd)",
     "ms"),
    ("vsock-h2g", "vsock host → guest, 256 MiB (vmm: Unix socket; QEMU: vhost-vsock)", "MiB/s"),
    ("vsock-g2h", "vsock guest → host, 256 MiB", "MiB/s"),
    ("vsock-rr", "vsock 1-byte round trip, host ↔ guest echo (median of 2,000)", "µs"),
    ("fs-tree", "virtio-fs: read 2,000 small files (1–16 KiB, 17 MiB)", "ms"),
    ("fs-big", "virtio-fs: read a 64 MiB file (time in read(2); SHA-256 checked)", "MiB/s"),
    ("fs-write", "virtio-fs: write 64 MiB + fsync", "MiB/s"),
    ("ext4-tree", "ext4 on virtio-blk: read the same 2,000 files", "ms"),
    ("ext4-big", "ext4 on virtio-blk: read the same 64 MiB file", "MiB/s"),
    ("ext4-write", "ext4 on virtio-blk: write 64 MiB + fsync", "MiB/s"),
]


SNAP_ROWS = [
    ("shell-boot", "cold boot of the root disk: spawn → the output of the shell's command", "ms"),
    ("snap-restore", "restore of that shell: spawn → the output of a command waiting on stdin",
     "ms"),
]


# What L1's kernel prints when a CPU has been stuck in it: seen with the QEMU inside L1, whose
# KVM_RUN spun in kvm_inject_apic_timer_irqs for minutes, deaf to spawn-until's SIGKILL, while
# the watchdog's reports kept the console from going quiet.
LOCKUP = b"watchdog: BUG: soft lockup"
# The other sign of a stuck CPU there: work queued on it never runs (seen with vmm and QEMU).
HUNG = b"blocked for more than"


def run_testhost(job, work, env, stall, limit, log):
    """One test-host boot: (console, finished). Its console is copied to `log` as it comes;
    the boot is stopped when nothing comes for `stall` seconds, after `limit` seconds, or at
    L1's first soft-lockup report."""
    results_img = os.path.join(work, "results.tar")
    with open(results_img, "wb") as f:
        f.truncate(128 << 20)
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "resources", "testhost.sh"), job,
                             results_img], env=env, stdout=subprocess.PIPE,
                            start_new_session=True)
    console = b""
    start = last = time.monotonic()
    fd = proc.stdout.fileno()
    with open(log, "ab") as f:
        while True:
            now = time.monotonic()
            tail = console[-65536:]
            locked = LOCKUP in tail or HUNG in tail
            if now - last > stall or now - start > limit or locked:
                why = ("a CPU of the test host locked up" if locked
                       else f"the test host stalled ({now - last:.0f} s without output)")
                print(f"{why}; stopping it", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            r, _, _ = select.select([fd], [], [], 5)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                console += chunk
                f.write(chunk)
                f.flush()
                last = time.monotonic()
    proc.wait()
    text = console.decode(errors="replace")
    finished = "TESTHOST-JOB-EXIT 0" in text
    if finished:
        subprocess.run(["tar", "-xf", results_img, "-C", os.path.join(work, "out")], check=False)
    os.unlink(results_img)
    return text, finished


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--per-boot", type=int, default=5,
                    help="runs per test-host boot (each boot adds about 15 s)")
    ap.add_argument("--only", default="spawn,io",
                    help="comma-separated: spawn,io,snap,fs,fsio,vsock")
    ap.add_argument("--fs-files", type=int, default=2000, help="fsio: small files to read")
    ap.add_argument("--fs-mb", type=int, default=64, help="fsio: MiB of the big file and the write")
    ap.add_argument("--vsock-mb", type=int, default=256, help="vsock: MiB each way")
    ap.add_argument("--vsock-rr", type=int, default=2000, help="vsock: 1-byte round trips")
    ap.add_argument("--blk-mb", type=int, default=32)
    ap.add_argument("--blk-ops", type=int, default=200)
    ap.add_argument("--net-mb", type=int, default=16, help="MiB L1 → guest")
    ap.add_argument("--net-tx-mb", type=int, default=4, help="MiB guest → L1 (slower)")
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/vmm"))
    ap.add_argument("--testhost-memory", type=int,
                    default=int(os.environ.get("TESTHOST_MEMORY_MIB", "3072")))
    ap.add_argument("--stall", type=int, default=180,
                    help="seconds without console output after which a boot is retried")
    ap.add_argument("--retries", type=int, default=2, help="retries of a stalled boot")
    ap.add_argument("--keep", default=None, help="keep the job's files and logs in this directory")
    ap.add_argument("--l1-args", default="init_on_free=1",
                    help="added to the test host kernel's command line (see above)")
    args = ap.parse_args()
    if not os.path.exists(args.vmm):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = args.keep or tempfile.mkdtemp(prefix="vmm-nested-bench.")
    shutil.rmtree(work, ignore_errors=True)
    job, out = os.path.join(work, "job"), os.path.join(work, "out")
    os.makedirs(job)
    os.makedirs(out)
    build_job(job, args)
    env = dict(os.environ, TESTHOST_MEMORY_MIB=str(args.testhost_memory), TESTHOST_CPUS="2",
               TESTHOST_KERNEL_ARGS=args.l1_args)
    console, boots, stalls = "", 0, 0
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    first = 1
    per_run = 120 + (240 if "fsio" in args.only.split(",") else 0)  # seconds, for --stall's limit
    while first <= args.runs:
        last = min(first + args.per_boot - 1, args.runs)
        write_job_script(job, args, first, last)
        for attempt in range(args.retries + 1):
            print(f"test-host boot for runs {first}–{last}", file=sys.stderr)
            text, finished = run_testhost(job, work, env, args.stall,
                                          120 + per_run * (last - first + 1),
                                          os.path.join(work, "console.log"))
            boots += 1
            if finished:
                console += text
                break
            stalls += 1
            if attempt == args.retries:
                sys.stderr.write(text[-4000:])
                sys.exit(f"the test host job failed {attempt + 1} times; files in {work}")
        first = last + 1
    elapsed = time.monotonic() - t0

    results, spawns, info = parse(console, args)
    for name in ("vmm", "qemu"):
        for line in results[name].pop("vsock-failed", []):
            print(f"a vsock measurement failed: {line}", file=sys.stderr)
        sink = results[name].pop("sink-bytes", [])
        if any(b != args.net_tx_mb << 20 for b in sink):
            sys.exit(f"{name}: the sink in L1 got {sink} bytes, not {args.net_tx_mb << 20}")

    def fmt(vals):
        return f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

    if any(results["vmm"].get(key) for key, *_ in ROWS):
        print("| metric | unit | vmm median (min–max) | QEMU microvm median (min–max) | vmm/QEMU |")
        print("|---|---|---|---|---|")
    for key, label, unit in ROWS:
        v, q = results["vmm"].get(key), results["qemu"].get(key)
        if not v or not q:
            continue
        ratio = statistics.median(v) / statistics.median(q)
        print(f"| {label} | {unit} | {fmt(v)} | {fmt(q)} | {ratio:.3f} |")
    if results["vmm"].get("snap-restore"):
        print("\n| metric (vmm) | unit | median (min–max) |")
        print("|---|---|---|")
        for key, label, unit in SNAP_ROWS:
            if results["vmm"].get(key):
                print(f"| {label} | {unit} | {fmt(results['vmm'][key])} |")
        print()
    retried = f", {stalls} of them stalled or locked up and were run again" if stalls else ""
    print(f"\n{args.runs} runs each, alternating, in {boots} test-host boots{retried} "
          f"({elapsed:.0f} s); guest "
          f"{MEM_MIB} MiB, 1 vCPU; blk: {args.blk_mb} MiB, {args.blk_ops} 4 KiB reads; net: "
          f"{args.net_mb} MiB L1 → guest, {args.net_tx_mb} MiB back; one warm-up spawn of each "
          "VMM per boot, not counted.")
    for line in dict.fromkeys(info):
        print(line.split(" ", 1)[1])
    print(f"{time.strftime('%Y-%m-%d')}; this machine: {os.cpu_count()} CPUs, load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after.")
    for name in ("vmm", "qemu"):
        vals = sorted(results[name].get("spawn", []))
        if vals:
            print(f"{name} spawn → VMM-INIT-OK, sorted (ms): " + " ".join(f"{v:.0f}" for v in vals))

    if spawns:
        print("\nEach spawn run (ms; vmm's phases from its --timings: kernel and initrd "
              "copied, first vCPU entry, first serial byte):")
        print("| run | VMM | spawn → VMM-INIT-OK | guest uptime | copied | entry | 1st byte |")
        print("|---|---|---|---|---|---|---|")
        for name, run, ms, uptime in sorted(spawns, key=lambda s: (s[1], s[0])):
            marks = vmm_timeline(os.path.join(out, f"spawn-{name}-{run}.err")) if name == "vmm" else {}
            cols = [marks.get("kernel and initrd copied"), marks.get("first vCPU entry"),
                    marks.get("first byte from the guest's serial port")]
            cells = " | ".join("" if c is None else f"{c:.0f}" for c in cols)
            up = "" if uptime is None else f"{uptime * 1000:.0f}"
            print(f"| {run} | {name} | {ms:.0f} | {up} | {cells} |")
    if args.keep:
        print(f"\nconsole and logs: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
