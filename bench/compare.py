#!/usr/bin/env python3
"""Side-by-side benchmark: vmm against QEMU's microvm on the same guest files.

Runs each scenario alternately on vmm and QEMU (RUNS times each) and prints a Markdown table
with median, min and max per VMM and the median ratio vmm/QEMU. Scenarios (the tiny PVH test
guest from tests/guests/):

  first-line   spawn → the guest's first serial line (test=hello; the guest then resets)
  cpu          user+sys CPU time of the whole hello run (wait4 rusage)
  peak-rss     peak RSS of the VMM process over the hello run (wait4 ru_maxrss)
  overhead     RSS beyond the guest RAM mapping, with the guest idle after its first line
               (test=halt; /proc/PID/smaps, the mapping the size of guest RAM excluded)
  serial       serial throughput: the guest writes BYTES bytes to COM1 (test=write)

Usage: bench/compare.py [--runs N] [--serial-bytes N] [--vmm PATH] [--guest PATH]
"""

import argparse
import os
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


def vmm_cmd(vmm, guest, cmdline):
    return [vmm, "--kernel", guest, "--memory", str(MEM_MIB), "--cmdline", cmdline]


def qemu_cmd(_vmm, guest, cmdline):
    return QEMU + ["-kernel", guest, "-append", cmdline]


class Spawned:
    """A VMM process with stdout read incrementally, timed from just before spawn."""

    def __init__(self, argv):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
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
        "peak-rss": ru.ru_maxrss / 1024.0,
    }


def idle_run(make, vmm, guest):
    s = Spawned(make(vmm, guest, "test=halt"))
    s.wait_for(b"halt: ready\n")
    time.sleep(0.05)
    kib = overhead_kib(s.proc.pid, MEM_MIB * 1024)
    s.proc.send_signal(signal.SIGTERM)
    s.drain_and_wait()
    return {"overhead": kib / 1024.0}


def serial_run(make, vmm, guest, nbytes):
    s = Spawned(make(vmm, guest, f"test=write bytes={nbytes}"))
    start = s.wait_for(b" bytes\n")
    end = s.wait_for(b"write: done\n")
    s.drain_and_wait()
    return {"serial": nbytes / (end - start) / 1024.0}


ROWS = [
    ("first-line", "spawn → first serial line", "ms", False),
    ("cpu", "CPU time, user+sys (hello run)", "ms", False),
    ("peak-rss", "peak RSS of the VMM process", "MiB", False),
    ("overhead", f"RSS beyond guest RAM ({MEM_MIB} MiB guest, idle)", "MiB", False),
    ("serial", "serial output throughput", "KiB/s", True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--serial-bytes", type=int, default=65536)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/release/vmm"))
    ap.add_argument("--guest", default=None)
    args = ap.parse_args()

    if args.guest is None:
        out = os.path.join(ROOT, "target/test-guests")
        subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "tests/guests"), f"OUT={out}"], check=True)
        args.guest = os.path.join(out, "pvh.elf")
    if not os.path.exists(args.vmm):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    results = {"vmm": {}, "qemu": {}}
    for i in range(args.runs):
        # Alternate which VMM goes first, so neither always runs on a warmer machine.
        order = [("vmm", vmm_cmd), ("qemu", qemu_cmd)]
        if i % 2:
            order.reverse()
        for name, make in order:
            for sample in (hello_run(make, args.vmm, args.guest),
                           idle_run(make, args.vmm, args.guest),
                           serial_run(make, args.vmm, args.guest, args.serial_bytes)):
                for key, value in sample.items():
                    results[name].setdefault(key, []).append(value)
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr)

    def fmt(vals):
        return f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

    print(f"| metric | unit | vmm median (min–max) | QEMU microvm median (min–max) | vmm/QEMU |")
    print("|---|---|---|---|---|")
    for key, label, unit, _higher_better in ROWS:
        v, q = results["vmm"][key], results["qemu"][key]
        ratio = statistics.median(v) / statistics.median(q)
        print(f"| {label} | {unit} | {fmt(v)} | {fmt(q)} | {ratio:.3f} |")
    print(f"\n{args.runs} runs each, alternating; serial: {args.serial_bytes} bytes; "
          f"guest RAM {MEM_MIB} MiB.")


if __name__ == "__main__":
    main()
