#!/usr/bin/env python3
"""Host-side peer for the test guest's `test=net` and `test=netbench` modes.

Talks raw Ethernet (EtherType 0x88b5, IEEE local experimental) on a tap interface through an
AF_PACKET socket; needs root (CAP_NET_RAW). Run it in the network namespace that holds the tap,
before the VMM starts, e.g.

    ip netns exec gtest python3 tests/guests/tools/netpeer.py hello --ifname gtap0

hello: waits for the guest's broadcast frame (`vmm-test-guest says hello`), prints it, then sends
       `--noise` frames of EtherType 0x88b6 (the guest must ignore them) and `--count` frames of
       0x88b5 (`host says hello <i>`, zero-padded to 60 bytes) to the guest's MAC, and prints
       each frame it sent as the guest must print it: `net: rx <len> <hex>`.
bench: reads the guest's debug-port marks from --debugcon (a FIFO that QEMU's isa-debugcon
       writes, or any file the VMM writes the port-0x80 bytes to), timestamps them, counts the
       guest's 0x88b5 frames, and when mark 0x21 (TX done) arrives sends --rxframes frames of
       --size bytes to the guest. Prints the TX and RX rates from the marks.
"""
import argparse
import os
import socket
import struct
import sys
import threading
import time

ETHERTYPE_TEST = 0x88B5
ETHERTYPE_NOISE = 0x88B6
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PEER_MAC = bytes.fromhex("020000000002")  # locally administered
SOL_SOCKET = 1
SO_RCVBUFFORCE = 33


def open_socket(ifname, proto):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    s.bind((ifname, proto))
    return s


def frame(dst, ethertype, payload, size=60):
    f = dst + PEER_MAC + struct.pack("!H", ethertype) + payload
    return f + bytes(max(0, size - len(f)))


def recv_guest_frame(s, deadline):
    """Next frame that came from the guest (not one we sent), or None at the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            return None
        if addr[2] != PACKET_OUTGOING:
            return data


def hello(args):
    s = open_socket(args.ifname, ETHERTYPE_TEST)
    print(f"peer: listening on {args.ifname} for EtherType 0x{ETHERTYPE_TEST:04x}", flush=True)
    f = recv_guest_frame(s, time.monotonic() + args.timeout)
    if f is None:
        print("peer: no frame from the guest", flush=True)
        return 1
    dst, src, et = f[0:6], f[6:12], struct.unpack("!H", f[12:14])[0]
    text = f[14:].rstrip(b"\0").decode("ascii", "replace")
    print(f"peer: got {len(f)} bytes dst {dst.hex(':')} src {src.hex(':')} type 0x{et:04x} "
          f"payload {text!r}", flush=True)
    print(f"peer: got hex {f.hex()}", flush=True)
    ok = dst == b"\xff" * 6 and et == ETHERTYPE_TEST and text == "vmm-test-guest says hello" \
        and len(f) == 60
    if not ok:
        print("peer: unexpected frame", flush=True)
    ns = open_socket(args.ifname, ETHERTYPE_NOISE)
    for i in range(args.noise):
        ns.send(frame(src, ETHERTYPE_NOISE, b"noise %d" % i))
        print(f"peer: sent noise frame {i} (type 0x{ETHERTYPE_NOISE:04x})", flush=True)
    for i in range(args.count):
        r = frame(src, ETHERTYPE_TEST, b"host says hello %d" % i)
        s.send(r)
        print(f"peer: sent {len(r)} bytes; guest should print: net: rx {len(r)} {r.hex()}",
              flush=True)
    return 0 if ok else 1


def bench(args):
    s = open_socket(args.ifname, ETHERTYPE_TEST)
    try:
        s.setsockopt(SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        pass
    marks = {}
    guest_mac = [None]
    seen = [0]
    stop = threading.Event()
    tx_go = threading.Event()

    def count_frames():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(65536)
            except socket.timeout:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            if guest_mac[0] is None:
                guest_mac[0] = data[6:12]
            seen[0] += 1

    def send_frames():
        tx_go.wait()
        if stop.is_set() or args.rxframes == 0:
            return
        dst = guest_mac[0] or bytes.fromhex(args.guest_mac.replace(":", ""))
        f = frame(dst, ETHERTYPE_TEST, b"host netbench", args.size)
        for _ in range(args.rxframes):
            while True:
                try:
                    s.send(f)
                    break
                except OSError:  # ENOBUFS: the tap queue is full
                    time.sleep(0.0005)

    threads = [threading.Thread(target=count_frames), threading.Thread(target=send_frames)]
    for t in threads:
        t.start()
    print(f"peer: waiting for marks on {args.debugcon}", flush=True)
    fd = os.open(args.debugcon, os.O_RDONLY)
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            b = os.read(fd, 1)
            if not b:
                time.sleep(0.01)
                continue
            t = time.monotonic()
            marks.setdefault(b[0], t)
            if b[0] == 0x21:
                tx_go.set()
            if b[0] == 0x02:  # the guest's reset
                break
    finally:
        os.close(fd)
        time.sleep(0.3)
        stop.set()
        tx_go.set()
        for t in threads:
            t.join()
    names = {0x01: "start", 0x20: "tx start", 0x21: "tx end", 0x22: "rx first", 0x23: "rx last",
             0x02: "reset"}
    t0 = marks.get(0x01, min(marks.values()) if marks else 0)
    for m in sorted(marks, key=marks.get):
        print(f"peer: mark 0x{m:02x} {names.get(m, '?'):8} +{(marks[m] - t0) * 1e3:9.3f} ms")
    print(f"peer: saw {seen[0]} frames from the guest")
    if 0x20 in marks and 0x21 in marks:
        dt = marks[0x21] - marks[0x20]
        print(f"peer: tx {args.frames} frames in {dt * 1e3:.1f} ms: {args.frames / dt:.0f} frames/s, "
              f"{args.frames * args.size * 8 / dt / 1e6:.1f} Mbit/s")
    if 0x22 in marks and 0x23 in marks and args.rxframes > 1:
        dt = marks[0x23] - marks[0x22]
        n = args.rxframes - 1
        print(f"peer: rx {args.rxframes} frames, first to last {dt * 1e3:.1f} ms: "
              f"{n / dt:.0f} frames/s, {n * args.size * 8 / dt / 1e6:.1f} Mbit/s")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("hello")
    h.add_argument("--ifname", default="gtap0")
    h.add_argument("--count", type=int, default=1, help="0x88b5 frames to send back")
    h.add_argument("--noise", type=int, default=0, help="0x88b6 frames to send first")
    h.add_argument("--timeout", type=float, default=60)
    b = sub.add_parser("bench")
    b.add_argument("--ifname", default="gtap0")
    b.add_argument("--debugcon", required=True, help="FIFO/file with the port-0x80 bytes")
    b.add_argument("--frames", type=int, default=20000, help="the guest's frames= (for the rate)")
    b.add_argument("--size", type=int, default=1514, help="the guest's size= / size of RX frames")
    b.add_argument("--rxframes", type=int, default=0, help="frames to send after mark 0x21")
    b.add_argument("--guest-mac", default="52:54:00:12:34:56", help="if no guest frame was seen")
    b.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    return hello(args) if args.mode == "hello" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
