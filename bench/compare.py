#!/usr/bin/env python3
"""Side-by-side benchmark: vmm against QEMU's microvm on the same guest files.

Runs each scenario alternately on vmm and QEMU (RUNS times each) and prints a Markdown table
with median, min and max per VMM and the median ratio vmm/QEMU. Scenarios (the tiny PVH test
guest from tests/guests/):

  first-line   spawn → the guest's first serial line (test=hello; the guest then resets)
  floor        spawn → the first line of `--version`: process start-up alone, the same harness
  first-line-ld  the same for tests/guests/ld_default.s, a PVH guest linked with binutils'
               defaults (a segment of just its ELF headers at 0xff000)
  cpu          user+sys CPU time of the whole hello run (wait4 rusage)
  peak-rss     peak RSS (VmHWM) of the VMM process once the guest's first line is out
               (test=halt: the guest then idles; wait4's ru_maxrss is not used because it
               counts the forking Python process's own pages)
  overhead     RSS beyond the guest RAM mapping at that point (/proc/PID/smaps, the mapping
               the size of guest RAM excluded)
  serial       serial throughput: the guest writes BYTES bytes to COM1 (test=write)
  blk-*        virtio-blk from the guest's minimal driver (test=blkbench) on a raw image:
               sequential write (then flush) and read of BLK_MB MiB in 128 KiB requests, and
               4 KiB random reads; phases timed by the guest's debug-port marks (port 0x80:
               vmm's --timings lines; QEMU's isa-debugcon into a FIFO, timestamped here)
  net-*        virtio-net on a TAP in a network namespace the harness creates (root only):
               the guest (test=netbench) sends NET_FRAMES frames of 1514 bytes, then receives
               as many from the harness's AF_PACKET socket; timed by the guest's marks
  api-*        vmm alone, without and with --api-socket (alternating; a table of its own):
               spawn → first serial line (test=hello), and peak RSS (VmHWM) once the guest
               idles (test=halt), with the API after it has answered GET /vm and GET /vm/exits
  snapshot-*   restore against cold boot (a table of its own), on a SNAP_MIB MiB guest
               (test=lines, which answers each input line with its number): cold boot →
               the guest's first byte; restore → the restored guest's answer to a line
               written to its stdin at spawn; peak RSS after that answer, also for a snapshot
               of a 4x larger guest. The snapshots are taken once, before the runs: vmm's with
               PUT /vm/pause + PUT /vm/snapshot, QEMU's with its monitor's `migrate
               "exec:cat > FILE"` (restored with `-incoming "exec:cat FILE"`; QEMU drops
               serial input that arrives while it loads, so the line is written once its
               monitor says `running`, polled every millisecond)

With --baseline PATH, a second vmm binary (an earlier build, say) runs every group but `api`
in the same rounds, in turn with the two others, and a last table sets vmm against it
(vmm/baseline): a change's cost measured side by side, on the same machine at the same time.

--vmm-arg ARG and --baseline-arg ARG (repeatable) add options to every boot of each
(`--vmm-arg=--no-rng` compares like with like against a build without virtio-rng).

Usage: bench/compare.py [--runs N] [--serial-bytes N] [--vmm PATH] [--baseline PATH]
                        [--vmm-arg ARG]... [--baseline-arg ARG]... [--guest PATH]
                        [--only GROUPS]
"""

import argparse
import ctypes
import os
import socket
import re
import tempfile
import threading
import select
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM_MIB = 64

QEMU = [
    "qemu-system-x86_64",
    "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,pic=off,pit=off,acpi=off",
    "-enable-kvm", "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-user-config",
    "-display", "none", "-serial", "stdio", "-no-reboot", "-device", "i8042",
    "-m", str(MEM_MIB),
]


GUEST_MAC = "52:54:00:12:34:56"
NET_TAP = "vmmbench0"
ETHERTYPE_TEST = 0x88B5


# Options added to every boot of a vmm binary (--vmm-arg, --baseline-arg), by its path.
BOOT_ARGS = {}


def vmm_cmd(vmm, guest, cmdline, disk=None, debug_fifo=None, netns=None):
    argv = [vmm, "--kernel", guest, "--memory", str(MEM_MIB), "--cmdline", cmdline]
    argv += BOOT_ARGS.get(vmm, [])
    if disk:
        argv += ["--drive", f"path={disk}", "--timings"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
        argv += ["--net", f"tap={NET_TAP},mac={GUEST_MAC}", "--timings"]
    return argv


def qemu_cmd(_vmm, guest, cmdline, disk=None, debug_fifo=None, netns=None):
    argv = QEMU + ["-kernel", guest, "-append", cmdline]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
        argv += ["-global", "virtio-mmio.force-legacy=false",
                 "-netdev", f"tap,id=n0,ifname={NET_TAP},script=no,downscript=no,vhost=off",
                 "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"]
    if disk:
        argv += ["-global", "virtio-mmio.force-legacy=false",
                 "-drive", f"id=d0,file={disk},format=raw,if=none",
                 "-device", "virtio-blk-device,drive=d0"]
    if debug_fifo:
        argv += ["-chardev", f"pipe,id=dbg,path={debug_fifo}",
                 "-device", "isa-debugcon,iobase=0x80,chardev=dbg"]
    return argv


class Spawned:
    """A VMM process with stdout read incrementally, timed from just before spawn."""

    def __init__(self, argv, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=stderr)
        self.buf = b""

    def wait_for(self, needle, limit=120.0):
        """Seconds since spawn when `needle` first appeared on stdout."""
        fd = self.proc.stdout.fileno()
        deadline = time.perf_counter() + limit
        while needle not in self.buf:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"{needle!r} not seen; got {self.buf[-200:]!r}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"exited before {needle!r}; got {self.buf[-200:]!r}")
                self.buf += chunk
        return time.perf_counter() - self.t0

    def wait_for_line(self, prefix, limit=120.0):
        """The whole output line that starts with `prefix` (bytes)."""
        self.wait_for(prefix, limit)
        start = self.buf.index(prefix)
        while b"\n" not in self.buf[start:]:
            self._more(limit)
        return self.buf[start:self.buf.index(b"\n", start)]

    def _more(self, limit):
        r, _, _ = select.select([self.proc.stdout.fileno()], [], [], limit)
        if not r:
            raise TimeoutError("no more output")
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            raise EOFError("output ended")
        self.buf += chunk

    def drain_and_wait(self, limit=120.0):
        """Reads stdout to EOF and reaps the process; returns its rusage."""
        fd = self.proc.stdout.fileno()
        deadline = time.perf_counter() + limit
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.proc.kill()
                break
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.buf += chunk
        _, status, rusage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = status
        return rusage


def overhead_kib(pid, guest_kib):
    """RSS in KiB of every mapping but the one the size of guest RAM."""
    total = guest = 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if size == guest_kib:
                    guest += rss
    return total - guest


def hello_run(make, vmm, guest):
    s = Spawned(make(vmm, guest, "test=hello"))
    first = s.wait_for(b"\n")
    ru = s.drain_and_wait()
    return {
        "first-line": first * 1000.0,
        "cpu": (ru.ru_utime + ru.ru_stime) * 1000.0,
    }


def floor_run(name, vmm):
    s = Spawned([vmm if name == "vmm" else QEMU[0], "--version"])
    first = s.wait_for(b"\n")
    s.drain_and_wait()
    return {"floor": first * 1000.0}


def ld_default_run(make, vmm, guest):
    s = Spawned(make(vmm, guest, ""))
    first = s.wait_for(b"\n")
    s.drain_and_wait()
    return {"first-line-ld": first * 1000.0}


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def idle_run(make, vmm, guest):
    s = Spawned(make(vmm, guest, "test=halt"))
    s.wait_for(b"halt: ready\n")
    time.sleep(0.05)
    hwm = vm_hwm_kib(s.proc.pid)
    kib = overhead_kib(s.proc.pid, MEM_MIB * 1024)
    s.proc.send_signal(signal.SIGTERM)
    s.drain_and_wait()
    return {"peak-rss": hwm / 1024.0, "overhead": kib / 1024.0}


def api_get(sock_path, path):
    """One GET on the API socket; returns the status code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def api_run(vmm, guest, i):
    """vmm without and with --api-socket, in alternating order."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "api.sock")
        for api in ([False, True] if i % 2 == 0 else [True, False]):
            extra = ["--api-socket", sock] if api else []
            tag = "api-on" if api else "api-off"
            s = Spawned(vmm_cmd(vmm, guest, "test=hello") + extra)
            out[f"{tag}-first-line"] = s.wait_for(b"\n") * 1000.0
            s.drain_and_wait()

            s = Spawned(vmm_cmd(vmm, guest, "test=halt") + extra)
            s.wait_for(b"halt: ready\n")
            if api:
                deadline = time.perf_counter() + 10
                while not os.path.exists(sock):
                    if time.perf_counter() > deadline:
                        raise TimeoutError("the API socket never appeared")
                    time.sleep(0.001)
                for path in ("/vm", "/vm/exits"):
                    if api_get(sock, path) != 200:
                        raise RuntimeError(f"GET {path} failed")
            time.sleep(0.05)
            out[f"{tag}-peak-rss"] = vm_hwm_kib(s.proc.pid) / 1024.0
            s.proc.send_signal(signal.SIGTERM)
            s.drain_and_wait()
            if os.path.exists(sock):
                raise RuntimeError("the API socket was left behind")
    return out


SNAP_MIB = 128


def api_request(sock_path, method, path, body=b""):
    """One request on vmm's API socket; returns (status code, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sock_path)
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[-1]


def wait_path(path, what, limit=10.0):
    deadline = time.perf_counter() + limit
    while not os.path.exists(path):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} never appeared")
        time.sleep(0.0005)


def lines_cmd(name, vmm, guest, mem_mib):
    if name == "vmm":
        return [vmm, "--kernel", guest, "--memory", str(mem_mib), "--cmdline",
                "test=lines"] + BOOT_ARGS.get(vmm, [])
    argv = QEMU + ["-kernel", guest, "-append", "test=lines"]
    return argv[:argv.index("-m")] + ["-m", str(mem_mib)] + argv[argv.index("-m") + 2:]


class QemuMonitor:
    """QEMU's human monitor on a Unix socket."""

    def __init__(self, path):
        wait_path(path, "QEMU's monitor socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.0005)
        self.seen = b""

    def ask(self, command, until, limit=60.0):
        """Sends `command` every millisecond until the answers contain `until`."""
        deadline = time.perf_counter() + limit
        self.seen = b""
        while until not in self.seen:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"QEMU monitor: {command!r} never gave {until!r}")
            self.sock.sendall(command.encode() + b"\n")
            r, _, _ = select.select([self.sock], [], [], 0.001)
            if r:
                self.seen += self.sock.recv(65536)

    def close(self):
        self.sock.close()


def take_snapshot(name, vmm, guest, mem_mib, where):
    """Boots test=lines, has it answer one line, and saves it: vmm into the directory
    `where`, QEMU into the migration file `where`."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "ctl.sock")
        extra = (["--api-socket", sock] if name == "vmm"
                 else ["-monitor", f"unix:{sock},server,nowait"])
        s = Spawned(lines_cmd(name, vmm, guest, mem_mib) + extra, stdin=subprocess.PIPE)
        s.wait_for(b"lines: ready\n")
        s.proc.stdin.write(b"one\n")
        s.proc.stdin.flush()
        s.wait_for(b"line 1: one\n")
        if name == "vmm":
            wait_path(sock, "vmm's API socket")
            for method, path, body in [("PUT", "/vm/pause", b""),
                                       ("PUT", "/vm/snapshot", f'{{"path": "{where}"}}'.encode())]:
                code, answer = api_request(sock, method, path, body)
                if code not in (200, 204):
                    raise RuntimeError(f"{method} {path}: {code} {answer!r}")
        else:
            mon = QemuMonitor(sock)
            mon.ask(f'migrate "exec:cat > {where}"', b"(qemu)")
            mon.ask("info migrate", b"completed")
            mon.close()
        s.proc.kill()
        s.drain_and_wait()


def snapshot_run(name, vmm, guest, snaps):
    """Cold boot, then restore of each snapshot in `snaps` ({MiB: where}); the answer to a
    line typed at spawn."""
    out = {}
    s = Spawned(lines_cmd(name, vmm, guest, SNAP_MIB), stdin=subprocess.PIPE)
    out["snapshot-cold"] = s.wait_for(b"l") * 1000.0
    s.wait_for(b"lines: ready\n")
    time.sleep(0.02)
    out["snapshot-cold-rss"] = vm_hwm_kib(s.proc.pid) / 1024.0
    s.proc.kill()
    s.drain_and_wait()
    for mib, where in snaps.items():
        with tempfile.TemporaryDirectory() as tmp:
            if name == "vmm":
                s = Spawned([vmm, "--restore", where], stdin=subprocess.PIPE)
                s.proc.stdin.write(b"two\n")
                s.proc.stdin.flush()
            else:
                mon_path = os.path.join(tmp, "mon.sock")
                s = Spawned(lines_cmd(name, vmm, guest, mib) + [
                    "-incoming", f"exec:cat {where}", "-monitor", f"unix:{mon_path},server,nowait"],
                    stdin=subprocess.PIPE)
                mon = QemuMonitor(mon_path)
                mon.ask("info status", b"status: running")
                mon.close()
                s.proc.stdin.write(b"two\n")
                s.proc.stdin.flush()
            answered = s.wait_for(b"line 2: two\n") * 1000.0
            time.sleep(0.02)
            rss = vm_hwm_kib(s.proc.pid) / 1024.0
            s.proc.kill()
            s.drain_and_wait()
        suffix = "" if mib == SNAP_MIB else f"-{mib}"
        out[f"snapshot-restore{suffix}"] = answered
        out[f"snapshot-restore-rss{suffix}"] = rss
    return out


def serial_run(make, vmm, guest, nbytes):
    s = Spawned(make(vmm, guest, f"test=write bytes={nbytes}"))
    start = s.wait_for(b" bytes\n")
    end = s.wait_for(b"write: done\n")
    s.drain_and_wait()
    return {"serial": nbytes / (end - start) / 1024.0}


class Marks:
    """The guest's debug-port (0x80) marks, timestamped: from QEMU's isa-debugcon through a
    FIFO read here, or from vmm's --timings lines on its stderr."""

    TIMING = re.compile(r"\[vmm +([0-9.]+) ms\] guest debug port 0x80: (0x[0-9a-f]+)")

    def __init__(self):
        self.at = {}

    def fifo(self, tmp):
        """A FIFO for QEMU's debugcon, read on a thread; returns its path."""
        path = os.path.join(tmp, "debugcon")
        os.mkfifo(path)

        def reader():
            with open(path, "rb", buffering=0) as f:
                while True:
                    b = f.read(1)
                    if not b:
                        return
                    self.at.setdefault(b[0], time.perf_counter())

        threading.Thread(target=reader, daemon=True).start()
        return path

    def from_timings(self, stderr_file):
        stderr_file.seek(0)
        for line in stderr_file.read().decode(errors="replace").splitlines():
            m = self.TIMING.search(line)
            if m:
                self.at.setdefault(int(m.group(2), 16), float(m.group(1)) / 1000.0)

    def between(self, start, end):
        return self.at[end] - self.at[start]


def run_marked(name, argv_for, tmp, result_prefix):
    """Runs a benchmark guest until its result line; returns (line, Marks)."""
    marks = Marks()
    fifo = marks.fifo(tmp) if name == "qemu" else None
    err = tempfile.TemporaryFile()
    s = Spawned(argv_for(fifo), stderr=err)
    result = s.wait_for_line(result_prefix)
    if name == "qemu":
        s.proc.send_signal(signal.SIGTERM)  # QEMU's debugcon keeps it from seeing the reset
    s.drain_and_wait()
    marks.from_timings(err)
    return result, marks


BLK_PHASES = {"blk-write": (0x10, 0x11), "blk-read": (0x12, 0x13), "blk-4k": (0x14, 0x15)}


def blk_run(name, make, vmm, guest, blk_mb, ops):
    """Phase times (s) from the guest's debug-port marks, as throughput/rate."""
    cmdline = f"test=blkbench mb={blk_mb} ops={ops}"
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate((blk_mb + 1) << 20)
        result, marks = run_marked(
            name, lambda fifo: make(vmm, guest, cmdline, disk=disk, debug_fifo=fifo), tmp,
            b"blkbench: write ")
    if not result.endswith(b"errors 0"):
        raise RuntimeError(f"{name}: blkbench reported errors: {result!r}")
    t = {k: marks.between(a, b) for k, (a, b) in BLK_PHASES.items()}
    return {
        "blk-write": blk_mb / t["blk-write"],
        "blk-read": blk_mb / t["blk-read"],
        "blk-4k": ops / t["blk-4k"],
    }


class Netns:
    """A network namespace holding one TAP, for the net rows; deleted by close()."""

    def __init__(self):
        self.name = f"vmmbench-{os.getpid()}"
        run = lambda *a: subprocess.run(["ip", *a], check=True)
        run("netns", "add", self.name)
        try:
            run("-n", self.name, "link", "set", "lo", "up")
            run("-n", self.name, "tuntap", "add", "dev", NET_TAP, "mode", "tap")
            # The host → guest burst must fit the TAP's queue.
            run("-n", self.name, "link", "set", NET_TAP, "txqueuelen", "50000", "up")
            subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1"], check=True)
        except Exception:
            self.close()
            raise

    def socket(self):
        """An AF_PACKET socket on the TAP, opened from a thread that joined the namespace."""
        out = {}

        def work():
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{self.name}") as f:
                if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns")
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_TEST))
            sock.bind((NET_TAP, ETHERTYPE_TEST))
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            out["sock"] = sock

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return out["sock"]

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def net_run(name, make, vmm, guest, netns, frames):
    size = 1514
    cmdline = f"test=netbench frames={frames} size={size} rxframes={frames}"
    sock = netns.socket()
    guest_mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
    peer = {"tx_seen": 0}

    def peer_thread():
        # Count the guest's frames, then send as many back to it.
        sock.settimeout(30)
        try:
            while peer["tx_seen"] < frames:
                data = sock.recv(4096)
                if data[6:12] == guest_mac:
                    peer["tx_seen"] += 1
        except socket.timeout:
            return
        frame = (guest_mac + bytes.fromhex("020000000002") + ETHERTYPE_TEST.to_bytes(2, "big")
                 + b"host netbench").ljust(size, b"\0")
        for _ in range(frames):
            sock.send(frame)

    t = threading.Thread(target=peer_thread, daemon=True)
    t.start()
    with tempfile.TemporaryDirectory() as tmp:
        result, marks = run_marked(
            name, lambda fifo: make(vmm, guest, cmdline, debug_fifo=fifo, netns=netns.name), tmp,
            b"netbench: tx ")
    t.join(timeout=5)
    sock.close()
    if not result.endswith(b"errors 0") or f"rx {frames} frames".encode() not in result:
        raise RuntimeError(f"{name}: netbench: {result!r}")
    if peer["tx_seen"] != frames:
        raise RuntimeError(f"{name}: the host saw {peer['tx_seen']} of {frames} guest frames")
    tx_s, rx_s = marks.between(0x20, 0x21), marks.between(0x22, 0x23)
    return {
        "net-tx": frames / tx_s,
        "net-tx-mib": frames * size / tx_s / (1 << 20),
        "net-rx": frames / rx_s,
        "net-rx-mib": frames * size / rx_s / (1 << 20),
    }


ROWS = [
    ("first-line", "spawn → first serial line", "ms", False),
    ("first-line-ld", "spawn → first serial line, guest linked with ld's defaults", "ms", False),
    ("floor", "floor: spawn → first line of `--version` (no VM)", "ms", False),
    ("cpu", "CPU time, user+sys (hello run)", "ms", False),
    ("peak-rss", "peak RSS of the VMM process at the first line", "MiB", False),
    ("overhead", f"RSS beyond guest RAM ({MEM_MIB} MiB guest, idle)", "MiB", False),
    ("serial", "serial output throughput", "KiB/s", True),
    ("blk-write", "virtio-blk sequential write + flush, 128 KiB requests", "MiB/s", True),
    ("blk-read", "virtio-blk sequential read, 128 KiB requests", "MiB/s", True),
    ("blk-4k", "virtio-blk 4 KiB random reads", "req/s", True),
    ("net-tx", "virtio-net guest → host, 1514-byte frames", "frames/s", True),
    ("net-tx-mib", "virtio-net guest → host throughput", "MiB/s", True),
    ("net-rx", "virtio-net host → guest, 1514-byte frames", "frames/s", True),
    ("net-rx-mib", "virtio-net host → guest throughput", "MiB/s", True),
]

SNAP_ROWS = [
    ("snapshot-cold", f"cold boot: spawn → the guest's first byte ({SNAP_MIB} MiB)", "ms"),
    ("snapshot-restore", f"restore: spawn → the restored guest's answer ({SNAP_MIB} MiB)", "ms"),
    ("snapshot-restore-512", f"restore: spawn → the answer ({4 * SNAP_MIB} MiB guest)", "ms"),
    ("snapshot-cold-rss", "peak RSS, cold boot, once the guest is ready", "MiB"),
    ("snapshot-restore-rss", f"peak RSS after the restored guest's answer ({SNAP_MIB} MiB)",
     "MiB"),
    ("snapshot-restore-rss-512", f"the same, {4 * SNAP_MIB} MiB guest", "MiB"),
]

API_ROWS = [
    ("first-line", "spawn → first serial line", "ms"),
    ("peak-rss", "peak RSS once the guest idles (with the API: after GET /vm, GET /vm/exits)",
     "MiB"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--serial-bytes", type=int, default=65536)
    ap.add_argument("--blk-mb", type=int, default=16)
    ap.add_argument("--blk-ops", type=int, default=2000)
    ap.add_argument("--net-frames", type=int, default=20000)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/vmm"))
    ap.add_argument("--baseline", default=None,
                    help="a second vmm binary to set vmm against, in the same rounds")
    ap.add_argument("--vmm-arg", action="append", default=[],
                    help="an option for every boot of --vmm (repeatable), e.g. --vmm-arg=--no-rng")
    ap.add_argument("--baseline-arg", action="append", default=[],
                    help="an option for every boot of --baseline (repeatable)")
    ap.add_argument("--guest", default=None)
    ap.add_argument("--only", default=None,
                    help="comma-separated groups to run: "
                         "hello,ld,floor,idle,serial,blk,net,api,snapshot")
    args = ap.parse_args()
    BOOT_ARGS[args.vmm] = args.vmm_arg
    if args.baseline:
        BOOT_ARGS[args.baseline] = args.baseline_arg

    if args.guest is None:
        out = os.path.join(ROOT, "target/test-guests")
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "tests/guests"), f"OUT={out}"], check=True)
        args.guest = os.path.join(out, "pvh.elf")
    ld_guest = os.path.join(os.path.dirname(args.guest), "ld-default.elf")
    if not os.path.exists(ld_guest):
        print(f"first-line-ld row skipped: no {ld_guest}", file=sys.stderr)
        ld_guest = None
    if not os.path.exists(args.vmm):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    only = set(args.only.split(",")) if args.only else None
    netns = None
    if only is not None and "net" not in only:
        pass
    elif os.geteuid() == 0:
        netns = Netns()
    else:
        print("net rows skipped: creating a network namespace with a TAP needs root", file=sys.stderr)

    # Who runs: (result key, kind of VMM, command maker, binary).
    players = [("vmm", "vmm", vmm_cmd, args.vmm), ("qemu", "qemu", qemu_cmd, args.vmm)]
    if args.baseline:
        players.append(("base", "vmm", vmm_cmd, args.baseline))

    snap_tmp = None
    snaps = {}
    if only is None or "snapshot" in only:
        snap_tmp = tempfile.TemporaryDirectory()
        for key, kind, _make, binary in players:
            snaps[key] = {}
            for mib in (SNAP_MIB, 4 * SNAP_MIB):
                where = os.path.join(snap_tmp.name, f"{key}-{mib}")
                take_snapshot(kind, binary, args.guest, mib, where)
                snaps[key][mib] = where

    results = {key: {} for key, *_ in players}
    for i in range(args.runs):
        # Rotate who goes first, so no one always runs on a warmer machine.
        order = players[i % len(players):] + players[:i % len(players)]
        for name, kind, make, binary in order:
            groups = [
                ("hello", lambda: hello_run(make, binary, args.guest)),
                ("ld", lambda: ld_default_run(make, binary, ld_guest) if ld_guest else {}),
                ("floor", lambda: floor_run(kind, binary)),
                ("idle", lambda: idle_run(make, binary, args.guest)),
                ("serial", lambda: serial_run(make, binary, args.guest, args.serial_bytes)),
                ("blk", lambda: blk_run(kind, make, binary, args.guest, args.blk_mb,
                                        args.blk_ops)),
                ("net", lambda: net_run(kind, make, binary, args.guest, netns,
                                        args.net_frames) if netns else {}),
                # vmm against itself: run once per round, in vmm's turn.
                ("api", lambda: api_run(binary, args.guest, i) if name == "vmm" else {}),
                ("snapshot", lambda: snapshot_run(kind, binary, args.guest, snaps[name])),
            ]
            for group, run in groups:
                if only is not None and group not in only:
                    continue
                for key, value in run().items():
                    results[name].setdefault(key, []).append(value)
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
    if netns:
        netns.close()
    if snap_tmp:
        snap_tmp.cleanup()

    def fmt(vals):
        return f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

    if any(key in results["vmm"] for key, *_ in ROWS):
        print(f"| metric | unit | vmm median (min–max) | QEMU microvm median (min–max) | vmm/QEMU |")
        print("|---|---|---|---|---|")
        for key, label, unit, _higher_better in ROWS:
            if key not in results["vmm"]:
                continue
            v, q = results["vmm"][key], results["qemu"][key]
            ratio = statistics.median(v) / statistics.median(q)
            print(f"| {label} | {unit} | {fmt(v)} | {fmt(q)} | {ratio:.3f} |")
        print(f"\n{args.runs} runs each, alternating; serial: {args.serial_bytes} bytes; "
              f"blk: {args.blk_mb} MiB, {args.blk_ops} 4 KiB reads; net: {args.net_frames} frames "
              f"each way; guest RAM {MEM_MIB} MiB.")
    if "api-on-first-line" in results["vmm"]:
        print("\n| metric | unit | without --api-socket median (min–max) | with --api-socket "
              "median (min–max) | with − without (medians) |")
        print("|---|---|---|---|---|")
        for key, label, unit in API_ROWS:
            off, on = results["vmm"][f"api-off-{key}"], results["vmm"][f"api-on-{key}"]
            diff = statistics.median(on) - statistics.median(off)
            print(f"| {label} | {unit} | {fmt(off)} | {fmt(on)} | {diff:+.2f} |")
        print(f"\n{args.runs} runs each, alternating; guest RAM {MEM_MIB} MiB.")
    if "snapshot-restore" in results["vmm"]:
        print("\n| metric | unit | vmm median (min–max) | QEMU microvm median (min–max) "
              "| vmm/QEMU |")
        print("|---|---|---|---|---|")
        for key, label, unit in SNAP_ROWS:
            v, q = results["vmm"][key], results["qemu"][key]
            ratio = statistics.median(v) / statistics.median(q)
            print(f"| {label} | {unit} | {fmt(v)} | {fmt(q)} | {ratio:.3f} |")
        print(f"\n{args.runs} runs each, alternating.")
    if args.baseline:
        print(f"\n| metric | unit | vmm median (min–max) | baseline median (min–max) "
              "| vmm/baseline |")
        print("|---|---|---|---|---|")
        for key, label, unit, *_ in ROWS + SNAP_ROWS:
            if key not in results["vmm"] or key not in results["base"]:
                continue
            v, b = results["vmm"][key], results["base"][key]
            ratio = statistics.median(v) / statistics.median(b)
            print(f"| {label} | {unit} | {fmt(v)} | {fmt(b)} | {ratio:.3f} |")
        print(f"\n{args.runs} runs each, in turn; baseline: {args.baseline}")


if __name__ == "__main__":
    main()
