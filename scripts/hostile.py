#!/usr/bin/env python3
"""Hostile clients at scale for scripts/hostile.sh (Python 3 stdlib only).

    hostile.py emfile    --addr HOST:PORT --pid PID [--conns 1000]
    hostile.py slowloris --addr HOST:PORT --pid PID [--conns 2000] [--timeout 3]
    hostile.py rststorm  --addr HOST:PORT --pid PID [--conns 5000] [--batch 500]

Each scenario checks its expectations against the running server (loopback
only), samples the server's RSS from /proc/PID/status throughout, and
prints one tab-separated line on stdout:

    scenario  ok|FAIL  outcome  rss_before_MiB  rss_peak_MiB  rss_after_MiB

Progress goes to stderr. The exit status is 1 when an expectation failed.
Every wait is bounded.
"""

import argparse
import os
import resource
import selectors
import socket
import struct
import sys
import time

from rctools import WS, Closed, HandshakeRefused, RssSampler, cpu_seconds, frame, parse_metrics, scrape

HEAD = (
    b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
MIB = 1024 * 1024


class Failed(Exception):
    pass


def log(msg):
    print(f"  {msg}", file=sys.stderr, flush=True)


def parse_addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ----- a well-behaved client -------------------------------------------------


def upgrade(addr, path="/echo", timeout=10):
    """An upgraded raw socket (for scenarios that then misbehave)."""
    try:
        ws = WS(addr, path, timeout=timeout)
    except (Closed, HandshakeRefused) as e:
        raise Failed(f"upgrade failed: {e}") from None
    ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ws.sock


def echo_once(addr, text):
    """A legitimate client: upgrade, one echo (heartbeat pings answered),
    closing handshake."""
    try:
        ws = WS(addr, "/echo", timeout=10)
    except (Closed, HandshakeRefused) as e:
        raise Failed(f"upgrade failed: {e}") from None
    try:
        ws.send_text(text)
        op, p = ws.recv()
        if (op, p) != (1, text.encode()):
            raise Failed(f"echo: got opcode {op} {p[:40]!r}")
        ws.close(1000)
        try:
            op, _ = ws.recv()
            raise Failed(f"expected the close reply, got opcode {op}")
        except Closed as c:
            if c.code != 1000:
                raise Failed(f"expected the close reply, got {c}") from None
    except Closed as c:
        raise Failed(f"echo: {c}") from None
    finally:
        ws.shutdown()


def echo_retrying(addr, text, patience=15):
    """`echo_once`, retried while the server recovers (bounded)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return echo_once(addr, text)
        except (OSError, Failed) as e:
            if time.monotonic() > deadline:
                raise Failed(f"no legitimate client served within {patience} s: {e}")
            time.sleep(0.1)


def connections(addr):
    """`ringcast_connections` summed over cores (the scrape counts 1)."""
    sums, _, _ = parse_metrics(scrape(addr, timeout=10))
    return int(sums.get("ringcast_connections", 0))


def wait_connections(addr, want, patience=30, at_least=False):
    deadline = time.monotonic() + patience
    while True:
        n = connections(addr)
        if (n >= want) if at_least else (n == want):
            return n
        if time.monotonic() > deadline:
            rel = ">=" if at_least else "=="
            raise Failed(f"ringcast_connections stayed at {n}, expected {rel} {want}")
        time.sleep(0.05)


def reset(s):
    """Close with a TCP reset (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


# ----- scenarios ----------------------------------------------------------


def emfile(args, addr):
    """1,000 connections against a server whose descriptor table holds ~500:
    it must back off instead of spinning, and recover once they leave."""
    conns = []
    for _ in range(args.conns):
        conns.append(socket.create_connection(addr, timeout=10))
    log(f"{len(conns)} connections open (the server's table is full)")
    time.sleep(1.0)
    c0, t0 = cpu_seconds(args.pid), time.monotonic()
    time.sleep(3.0)
    cpu = (cpu_seconds(args.pid) - c0) / (time.monotonic() - t0)
    log(f"server CPU while full: {cpu:.3f} CPU-s/s")
    if cpu >= 0.5:
        raise Failed(f"server spins with a full descriptor table: {cpu:.2f} CPU-s/s")
    for s in conns:
        s.close()
    echo_retrying(addr, "after the descriptor flood")
    wait_connections(addr, 1)
    return f"{args.conns} conns: CPU {cpu:.3f} CPU-s/s while full; recovered, echo ok"


def slowloris(args, addr):
    """Thousands of request heads at one byte per second: every one closed
    at the handshake timeout, without an answer; legit clients served."""
    sel = selectors.DefaultSelector()
    for _ in range(args.conns):
        s = socket.create_connection(addr, timeout=10)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    log(f"{args.conns} slowloris connections open")
    open_socks = {key.fileobj for key in sel.get_map().values()}
    start = time.monotonic()
    deadline = start + args.timeout + 20
    sent = 0
    legit = 0
    last_close = start
    while open_socks:
        if time.monotonic() > deadline:
            raise Failed(f"{len(open_socks)} slowloris connections still open after "
                         f"{deadline - start:.0f} s (handshake timeout {args.timeout} s)")
        # One more byte each; the head's last byte is never sent.
        if sent < len(HEAD) - 1:
            for s in list(open_socks):
                try:
                    s.send(HEAD[sent:sent + 1])
                except OSError:
                    pass  # closed: the read below sees it
            sent += 1
        tick_end = time.monotonic() + 1.0
        while time.monotonic() < tick_end and open_socks:
            for key, _ in sel.select(timeout=max(0.0, tick_end - time.monotonic())):
                s = key.fileobj
                try:
                    d = s.recv(4096)
                except ConnectionResetError:
                    d = b""
                except BlockingIOError:
                    continue
                if d:
                    raise Failed(f"the server answered an unfinished head: {d[:60]!r}")
                sel.unregister(s)
                s.close()
                open_socks.discard(s)
                last_close = time.monotonic()
        # Meanwhile a legitimate client is served.
        echo_once(addr, f"legit {legit}")
        legit += 1
        log(f"t={time.monotonic() - start:4.1f}s: {len(open_socks)} open, legit echo ok")
    wait_connections(addr, 1)
    return (f"{args.conns} conns, 1 B/s: all closed within {last_close - start:.1f} s "
            f"(timeout {args.timeout} s); {legit} legit echoes ok")


def rststorm(args, addr):
    """Thousands of connections reset mid-handshake and mid-frame, in
    batches: nothing left behind."""
    half_head = HEAD[: len(HEAD) // 2]
    data = frame(2, b"\x07" * 1000)
    half_frame = data[: len(data) // 2]
    batches = args.conns // args.batch
    done = {"handshake": 0, "frame": 0}
    for b in range(batches):
        kind = "handshake" if b % 2 == 0 else "frame"
        socks = []
        for _ in range(args.batch):
            if kind == "handshake":
                s = socket.create_connection(addr, timeout=10)
                s.sendall(half_head)
            else:
                s = upgrade(addr)
                s.sendall(half_frame)
            socks.append(s)
        # All of them held by the server (plus the scrape), then reset.
        wait_connections(addr, args.batch + 1, at_least=True)
        for s in socks:
            reset(s)
        done[kind] += len(socks)
    wait_connections(addr, 1)
    echo_retrying(addr, "after the reset storm")
    return (f"{done['handshake']} reset mid-handshake + {done['frame']} mid-frame: "
            f"connections back to 0, echo ok")


SCENARIOS = {"emfile": emfile, "slowloris": slowloris, "rststorm": rststorm}


def mib(v):
    return f"{v / MIB:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--addr", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--conns", type=int)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--timeout", type=float, default=3.0, help="the server's --handshake-timeout")
    p.add_argument("--rss-headroom-mib", type=int, default=64,
                   help="peak RSS may exceed the baseline by this much")
    p.add_argument("--rss-after-mib", type=int, default=16,
                   help="RSS after the scenario may exceed the baseline by this much")
    args = p.parse_args()
    if args.conns is None:
        args.conns = {"emfile": 1000, "slowloris": 2000, "rststorm": 5000}[args.scenario]
    raise_nofile()
    addr = parse_addr(args.addr)
    mem = RssSampler(args.pid)
    ok, outcome = True, ""
    try:
        outcome = SCENARIOS[args.scenario](args, addr)
    except (Failed, OSError) as e:
        ok, outcome = False, f"{type(e).__name__}: {e}"
    after = mem.finish()
    if ok and mem.peak > mem.before + args.rss_headroom_mib * MIB:
        ok, outcome = False, f"peak RSS over baseline + {args.rss_headroom_mib} MiB; {outcome}"
    if ok and after > mem.before + args.rss_after_mib * MIB:
        ok, outcome = False, f"RSS after over baseline + {args.rss_after_mib} MiB; {outcome}"
    print("\t".join([args.scenario, "ok" if ok else "FAIL", outcome,
                     mib(mem.before), mib(mem.peak), mib(after)]), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
