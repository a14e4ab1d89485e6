#!/usr/bin/env python3
"""Helpers for scripts/soak.sh (python3 standard library only).

Subcommands:
  hostile   misbehaving clients for a while; each must be cut off the way the
            server promises (close code, HTTP status, timeout); prints JSON
  apicheck  a /ws subscriber plus POST /api/publish with numbered messages;
            every one must arrive once, in order; prints JSON
  sample    samples server RSS, descriptors and /metrics into a CSV
  report    samples + round results -> summary.md, soak.svg, verdict (exit 1
            on failure)
"""

import argparse
import base64
import csv
import json
import math
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

# --------------------------------------------------------------------------
# A minimal blocking WebSocket client.


class Closed(Exception):
    """The peer ended the connection: code is the close code, None for EOF
    or reset without a close frame."""

    def __init__(self, code, how):
        super().__init__(f"{how} (code {code})")
        self.code = code
        self.how = how


class HandshakeRefused(Exception):
    def __init__(self, status, head):
        super().__init__(f"upgrade refused: {status}")
        self.status = status
        self.head = head


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def xor_mask(data, key):
    if not data or key == b"\0\0\0\0":
        return data
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(op, payload=b"", fin=True, mask=True, rsv=0, length=None, key=None):
    """One client frame; `length` overrides the announced payload length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4) if key is None else key
        return head + key + xor_mask(payload, key)
    return head + payload


def http_head(sock, limit=65536):
    """Reads an HTTP response head; returns (status, head, leftover)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise Closed(None, "EOF before the response head" if not buf else "EOF in the response head")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("response head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, head.decode("latin-1"), rest


class WS:
    def __init__(self, addr, path, timeout=10.0, rcvbuf=None, auto_pong=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(split_addr(addr))
            key = base64.b64encode(os.urandom(16)).decode()
            req = (f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
            self.sock.sendall(req.encode())
            status, head, rest = http_head(self.sock)
        except BaseException:
            self.sock.close()
            raise
        if status != 101:
            self.sock.close()
            raise HandshakeRefused(status, head)
        self.buf = bytearray(rest)
        self.auto_pong = auto_pong
        self.pings = 0
        self.received = 0
        self.wlock = threading.Lock()

    def send(self, data):
        with self.wlock:
            self.sock.sendall(data)

    def send_text(self, text):
        self.send(frame(0x1, text.encode() if isinstance(text, str) else text))

    def _need(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except ConnectionResetError:
                raise Closed(None, "reset") from None
            if not chunk:
                raise Closed(None, "EOF")
            self.received += len(chunk)
            self.buf += chunk

    def recv(self):
        """The next data frame as (opcode, payload); pings are answered (if
        auto_pong) and skipped; a close frame raises Closed(code)."""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            if b1 & 0x80:
                raise ValueError("masked server frame")
            n, hl = b1 & 0x7F, 2
            if n == 126:
                self._need(4)
                n, hl = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, hl = struct.unpack(">Q", self.buf[2:10])[0], 10
            self._need(hl + n)
            payload = bytes(self.buf[hl:hl + n])
            del self.buf[:hl + n]
            op = b0 & 0x0F
            if op == 0x9:
                self.pings += 1
                if self.auto_pong:
                    try:
                        self.send(frame(0xA, payload))
                    except OSError:
                        pass
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(code, "close frame")
            return op, payload

    def close(self, code=1000):
        try:
            self.send(frame(0x8, struct.pack(">H", code)))
        except OSError:
            pass

    def shutdown(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_close(ws, timeout):
    """Reads (answering pings per ws.auto_pong) until the server ends the
    connection; returns (code or None, how, seconds) or raises TimeoutError."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not closed within {timeout:.0f} s")
        ws.sock.settimeout(left)
        try:
            ws.recv()
        except Closed as c:
            return c.code, c.how, time.monotonic() - t0
        except socket.timeout:
            raise TimeoutError(f"not closed within {timeout:.0f} s") from None


# --------------------------------------------------------------------------
# hostile


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = {}

    def add(self, kind, ok, detail=""):
        with self.lock:
            k = self.kinds.setdefault(kind, {"runs": 0, "ok": 0, "bad": 0, "bad_examples": []})
            k["runs"] += 1
            if ok:
                k["ok"] += 1
            else:
                k["bad"] += 1
                if len(k["bad_examples"]) < 5:
                    k["bad_examples"].append(detail)


def raw_exchange(addr, data, timeout=10.0):
    """Sends bytes on a plain connection; returns (status, head) of the
    response and whether the server then closed the connection."""
    s = socket.create_connection(split_addr(addr), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            status, head, _ = http_head(s)
        except Closed:
            return 0, "", True
        closed = False
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < timeout:
                if not s.recv(65536):
                    closed = True
                    break
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
        return status, head, closed
    finally:
        s.close()


def ws_expect_close(addr, path, data, codes, timeout=10.0):
    ws = WS(addr, path, timeout=timeout)
    try:
        try:
            ws.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, how, _ = wait_close(ws, timeout)
        return code in codes, f"{how} code {code}, expected {sorted(codes)}"
    except TimeoutError as e:
        return False, str(e)
    finally:
        ws.shutdown()


def garbage_cases(args):
    """(name, function returning (ok, detail)) for one-shot protocol abuse."""
    a = args.addr
    too_long = 1 << 40

    def ws_case(path, data, codes):
        return lambda: ws_expect_close(a, path, data, codes)

    def random_frames():
        ws = WS(a, "/echo", timeout=5)
        try:
            ws.send(os.urandom(random.randint(8, 512)))
            try:
                code, how, _ = wait_close(ws, 3)
                return code in (None, 1002, 1007, 1008, 1009), f"{how} code {code}"
            except TimeoutError:
                return True, "server waits for more bytes (fine)"
        finally:
            ws.shutdown()

    def bad_json():
        ws = WS(a, "/ws", timeout=10)
        try:
            ws.send_text("{this is not json")
            op, payload = ws.recv()
            msg = json.loads(payload)
            if msg.get("type") != "error":
                return False, f"reply {payload[:80]!r}"
            ws.send_text('{"type":"subscribe","channel":"bad channel!"}')
            msg = json.loads(ws.recv()[1])
            if msg.get("type") != "error":
                return False, f"bad channel accepted: {msg}"
            ws.close(1000)
            code, how, _ = wait_close(ws, 10)
            return code == 1000, f"after a normal close: {how} code {code}"
        finally:
            ws.shutdown()

    def http(data, statuses, must_close=True):
        def run():
            status, head, closed = raw_exchange(a, data)
            ok = status in statuses and (closed or not must_close)
            return ok, f"status {status}, closed {closed}, expected {sorted(statuses)}"
        return run

    def api(key, body, statuses):
        def run():
            req = urllib.request.Request(f"http://{a}/api/publish", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            return status in statuses, f"status {status}, expected {sorted(statuses)}"
        return run

    big_head = (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (args.max_header_bytes + 1024)
                + b"\r\n\r\n")
    return [
        ("invalid-utf8", ws_case("/echo", frame(0x1, b"ok \xff\xfe\xfd"), {1007})),
        ("invalid-utf8-fragmented", ws_case(
            "/echo", frame(0x1, b"ok \xe2\x82", fin=False) + frame(0x0, b"\x28"), {1007})),
        ("oversized-frame", ws_case("/echo", frame(0x2, b"", length=too_long)[:14], {1009})),
        ("oversized-message", ws_case("/echo", frame(0x2, b"", length=args.max_message_bytes + 1)[:14], {1009})),
        ("unmasked", ws_case("/echo", frame(0x1, b"hi", mask=False), {1002})),
        ("reserved-opcode", ws_case("/echo", frame(0x3, b""), {1002})),
        ("rsv-bits", ws_case("/echo", frame(0x1, b"x", rsv=4), {1002})),
        ("fragmented-ping", ws_case("/echo", frame(0x9, b"x", fin=False), {1002})),
        ("orphan-continuation", ws_case("/echo", frame(0x0, b"x"), {1002})),
        ("random-frames", random_frames),
        ("ws-bad-json", bad_json),
        ("http-garbage", http(b"\x16\x03\x01\x02\x00garbage\r\n\r\n", {400})),
        ("huge-head", http(big_head, {431})),
        ("upgrade-without-key", http(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n", {400})),
        ("api-wrong-key", api("wrong-key", b'{"channel":"x","payload":1}', {401, 403})),
        ("api-bad-json", api(args.api_key, b'{"channel":', {400})),
    ]


def slowloris(args, tally):
    """Dribbles a request head one byte a second: the handshake timeout
    must end it."""
    limit = args.handshake_timeout + 5
    s = socket.create_connection(split_addr(args.addr), timeout=5)
    t0 = time.monotonic()
    try:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: soak\r\n")
        drip = b"X-Slow: " + b"z" * 4096
        i = 0
        while True:
            el = time.monotonic() - t0
            if el > limit + 5:
                tally.add("slowloris", False, f"still open after {el:.1f} s")
                return
            r, _, _ = select.select([s], [], [], 1.0)
            if r:
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    if data:  # then EOF
                        s.settimeout(5)
                        try:
                            while s.recv(4096):
                                pass
                        except OSError:
                            pass
                    el = time.monotonic() - t0
                    tally.add("slowloris", el <= limit, f"closed after {el:.1f} s (limit {limit:.0f})")
                    return
                tally.add("slowloris", False, f"unexpected reply {data[:40]!r}")
                return
            try:
                s.sendall(drip[i % len(drip):i % len(drip) + 1])
            except (BrokenPipeError, ConnectionResetError):
                el = time.monotonic() - t0
                tally.add("slowloris", el <= limit, f"closed (send) after {el:.1f} s")
                return
            i += 1
    finally:
        s.close()


def silent(args, tally):
    """Reads everything but never answers pings: closed 1011 by the
    heartbeat."""
    ws = WS(args.addr, "/echo", auto_pong=False)
    try:
        ws.send_text("hello")
        code, how, el = wait_close(ws, args.silent_limit)
        ok = code == 1011 and ws.pings >= 1
        tally.add("silent-peer", ok, f"{how} code {code} after {el:.1f} s, {ws.pings} pings")
    except TimeoutError as e:
        tally.add("silent-peer", False, f"{e} ({ws.pings} pings)")
    finally:
        ws.shutdown()


def nonreader(args, tally, n):
    """A /ws subscriber that never reads while another client floods its
    channel: the server must cut it off (1008) and stay bounded."""
    channel = f"soak-sink-{os.getpid()}-{n}"
    sub = WS(args.addr, "/ws", rcvbuf=4096)
    pub = None
    try:
        sub.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
        op, payload = sub.recv()
        if json.loads(payload).get("type") != "ack":
            tally.add("never-reading-subscriber", False, f"subscribe reply {payload[:80]!r}")
            return
        pub = WS(args.addr, "/ws")
        stop = threading.Event()

        def drain_pub():  # answers the publisher's pings
            pub.sock.settimeout(1)
            while not stop.is_set():
                try:
                    pub.recv()
                except socket.timeout:
                    continue
                except (Closed, OSError, ValueError):
                    return
        th = threading.Thread(target=drain_pub, daemon=True)
        th.start()
        body = "x" * 60000
        msg = frame(0x1, json.dumps({"type": "publish", "channel": channel, "payload": body}).encode(),
                    key=b"\0\0\0\0")
        sent = 0
        # 24 MB: well beyond --max-send-queue-bytes plus both socket buffers.
        for _ in range(400):
            try:
                pub.send(msg)
            except OSError:
                break
            sent += 1
            if sent % 20 == 0:
                time.sleep(0.02)
        stop.set()
        th.join(3)
        # Now read what reached us: it must end with the server's close.
        try:
            code, how, el = wait_close(sub, 30)
            got = sub.received
            ok = code in (1008, None) and got < sent * 60000
            tally.add("never-reading-subscriber", ok,
                      f"{how} code {code}; read {got} B of {sent * 60000} B published")
        except TimeoutError as e:
            tally.add("never-reading-subscriber", False, f"{e}; read {sub.received} B")
    finally:
        sub.shutdown()
        if pub:
            pub.close()
            pub.shutdown()


def flooder(args, tally):
    """Sends far more messages than --max-msgs-per-sec allows in one burst:
    closed 1008 by the rate limit."""
    ws = WS(args.addr, "/echo")
    try:
        n = int(args.rate_limit * 3) + 1000
        data = frame(0x1, b"f", key=b"\0\0\0\0") * n

        def send():
            try:
                ws.send(data)
            except OSError:
                pass
        th = threading.Thread(target=send, daemon=True)
        th.start()
        try:
            code, how, el = wait_close(ws, 20)
            tally.add("rate-flooder", code == 1008, f"{how} code {code} after {el:.1f} s")
        except TimeoutError as e:
            tally.add("rate-flooder", False, str(e))
        th.join(5)
    finally:
        ws.shutdown()


def cmd_hostile(args):
    tally = Tally()
    deadline = time.monotonic() + args.seconds
    errors = []

    def loop(name, fn, max_s, pause):
        n = 0
        while time.monotonic() + max_s < deadline:
            try:
                fn(n)
            except Exception as e:  # a refused connection etc.: counts as bad
                tally.add(name, False, f"{type(e).__name__}: {e}")
            n += 1
            time.sleep(pause)

    cases = garbage_cases(args)

    def garbage(n):
        name, fn = cases[n % len(cases)]
        try:
            ok, detail = fn()
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        tally.add(name, ok, detail)

    jobs = [
        ("garbage", garbage, 15, 0.3),
        ("slowloris", lambda n: slowloris(args, tally), args.handshake_timeout + 12, 0.5),
        ("slowloris", lambda n: slowloris(args, tally), args.handshake_timeout + 12, 0.5),
        ("silent-peer", lambda n: silent(args, tally), args.silent_limit + 2, 0.5),
        ("silent-peer", lambda n: silent(args, tally), args.silent_limit + 2, 0.5),
        ("never-reading-subscriber", lambda n: nonreader(args, tally, n), 40, 5),
    ]
    if args.rate_limit > 0:
        jobs.append(("rate-flooder", lambda n: flooder(args, tally), 25, 5))
    threads = [threading.Thread(target=loop, args=j, daemon=True) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1, deadline - time.monotonic() + 60))
    if any(t.is_alive() for t in threads):
        errors.append("a hostile client thread did not finish")
    out = {"kinds": tally.kinds, "errors": errors,
           "runs": sum(k["runs"] for k in tally.kinds.values()),
           "bad": sum(k["bad"] for k in tally.kinds.values()) + len(errors)}
    print(json.dumps(out))


# --------------------------------------------------------------------------
# apicheck


def cmd_apicheck(args):
    channel = args.channel
    sub = WS(args.addr, "/ws")
    sub.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 7}))
    op, payload = sub.recv()
    ack = json.loads(payload)
    if ack.get("type") != "ack":
        print(json.dumps({"error": f"subscribe: {payload[:100]!r}", "lost": None}))
        sys.exit(1)
    got = []
    other = []
    sub_error = []

    def reader():
        sub.sock.settimeout(1)
        while True:
            try:
                op, payload = sub.recv()
            except socket.timeout:
                if stop_reading.is_set():
                    return
                continue
            except (Closed, OSError, ValueError) as e:
                if not stop_reading.is_set():
                    sub_error.append(f"{type(e).__name__}: {e}")
                return
            m = json.loads(payload)
            if m.get("type") == "message" and m.get("channel") == channel:
                got.append(m["payload"]["seq"])
            else:
                other.append(m)

    stop_reading = threading.Event()
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    published = 0
    http_errors = []
    seq = 0
    t0 = time.monotonic()
    tick = 1.0 / args.rate
    nxt = t0
    run_tag = f"{os.getpid()}"
    while time.monotonic() - t0 < args.seconds:
        # Every fifth request is a batch of five.
        if seq % 25 == 20:
            msgs = [{"channel": channel, "payload": {"seq": seq + i, "run": run_tag}} for i in range(5)]
            body = {"messages": msgs}
            n = 5
        else:
            body = {"channel": channel, "payload": {"seq": seq, "run": run_tag}}
            n = 1
        req = urllib.request.Request(f"http://{args.addr}/api/publish", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "X-Api-Key": args.api_key})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                reply = json.loads(r.read())
                if r.status != 200 or reply.get("published") != n:
                    http_errors.append(f"status {r.status} {reply}")
                else:
                    published += n
                    seq += n
        except (urllib.error.URLError, OSError, ValueError) as e:
            http_errors.append(f"{type(e).__name__}: {e}")
            seq += n  # skip these numbers: they may or may not have gone out
        nxt += tick
        time.sleep(max(0.0, nxt - time.monotonic()))
    # Let the last deliveries arrive.
    deadline = time.monotonic() + 10
    while len(got) < published and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_reading.set()
    th.join(3)
    sub.close()
    sub.shutdown()
    dup = len(got) - len(set(got))
    out_of_order = sum(1 for a, b in zip(got, got[1:]) if b <= a)
    lost = published - len(set(got)) if not http_errors else None
    out = {"published": published, "received": len(got), "lost": max(0, published - len(set(got))),
           "duplicates": dup, "out_of_order": out_of_order, "http_errors": len(http_errors),
           "first_http_error": http_errors[0] if http_errors else None,
           "subscriber_error": sub_error[0] if sub_error else None,
           "unexpected_frames": len(other)}
    del lost
    print(json.dumps(out))


# --------------------------------------------------------------------------
# sample

COUNTERS = [
    ("connections", "ringcast_connections"),
    ("closed", "ringcast_closed_total"),
    ("slow_consumer_closes", "ringcast_slow_consumer_closes_total"),
    ("rate_limit_closes", "ringcast_rate_limit_closes_total"),
    ("protocol_errors", "ringcast_protocol_errors_total"),
    ("heartbeat_closes", "ringcast_heartbeat_closes_total"),
    ("suspect_connections", "ringcast_suspect_connections"),
    ("send_queue_bytes", "ringcast_send_queue_bytes"),
    ("deliveries", "ringcast_deliveries_total"),
    ("publishes", "ringcast_publishes_total"),
    ("messages_in", "ringcast_messages_in_total"),
    ("channels", "ringcast_channels"),
    ("subscriptions", "ringcast_subscriptions"),
]


def parse_metrics(text):
    """name -> sum over label sets; handshakes split into ok / other."""
    sums = {}
    hs_ok = hs_other = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        name = name_labels.split("{", 1)[0]
        sums[name] = sums.get(name, 0.0) + v
        if name == "ringcast_handshakes_total":
            if 'outcome="upgraded"' in name_labels:
                hs_ok += v
            elif 'outcome="http"' not in name_labels:
                hs_other += v
    return sums, hs_ok, hs_other


def proc_status(pid):
    rss = hwm = threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, hwm, threads


def cmd_sample(args):
    fields = (["t_s", "epoch", "round", "rss_kib", "hwm_kib", "fds", "threads"]
              + [c for c, _ in COUNTERS] + ["upgrades", "upgrades_refused", "metrics_ok"])
    t0 = time.monotonic()
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        nxt = t0
        while not os.path.exists(args.stop_file):
            try:
                rss, hwm, threads = proc_status(args.pid)
                fds = len(os.listdir(f"/proc/{args.pid}/fd"))
            except (FileNotFoundError, ProcessLookupError):
                print("soak.py sample: the server is gone", file=sys.stderr)
                break
            try:
                with open(args.round_file) as rf:
                    rnd = rf.read().strip() or "0"
            except OSError:
                rnd = "0"
            row = {"t_s": f"{time.monotonic() - t0:.1f}", "epoch": f"{time.time():.1f}", "round": rnd,
                   "rss_kib": rss, "hwm_kib": hwm, "fds": fds, "threads": threads}
            try:
                with urllib.request.urlopen(f"http://{args.addr}/metrics", timeout=5) as r:
                    sums, ok, other = parse_metrics(r.read().decode())
                for col, name in COUNTERS:
                    row[col] = int(sums.get(name, 0))
                row["upgrades"], row["upgrades_refused"] = int(ok), int(other)
                row["metrics_ok"] = 1
            except (urllib.error.URLError, OSError, ValueError):
                row["metrics_ok"] = 0
            w.writerow([row.get(k, "") for k in fields])
            f.flush()
            nxt += args.interval
            while time.monotonic() < nxt and not os.path.exists(args.stop_file):
                time.sleep(0.2)


# --------------------------------------------------------------------------
# report


def lsq(xs, ys):
    n = len(xs)
    if n < 3:
        return None, None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None, None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return b, my - b * mx


def last_json(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def svg_plot(rows, warm_s, fit, out, title):
    W, H = 900, 560
    ml, mr = 70, 70
    panels = [(50, 250), (330, 500)]  # y ranges (top, bottom) of two panels
    ts = [r["t_s"] / 60 for r in rows]
    tmax = max(ts[-1] if ts else 1, 0.1)

    def X(t):
        return ml + (W - ml - mr) * t / tmax

    def scale(vals, top, bot):
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-9:
            hi = lo + 1
        pad = (hi - lo) * 0.08
        lo, hi = max(0, lo - pad), hi + pad
        return (lambda v: bot - (bot - top) * (v - lo) / (hi - lo)), lo, hi

    def poly(pts, color, width=1.5):
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{d}"/>'

    def esc(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def axes(top, bot, lo, hi, Y, label, color, right=False):
        out = []
        x0 = W - mr if right else ml
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            y = Y(v)
            if not right:
                out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{W - mr}" y2="{y:.1f}" stroke="#eee"/>')
            anchor = "start" if right else "end"
            dx = 6 if right else -6
            out.append(f'<text x="{x0 + dx}" y="{y + 4:.1f}" font-size="11" text-anchor="{anchor}" '
                       f'fill="{color}">{v:,.0f}</text>')
        lx = W - 15 if right else 15
        out.append(f'<text x="{lx}" y="{(top + bot) / 2:.0f}" font-size="12" fill="{color}" '
                   f'text-anchor="middle" transform="rotate(-90 {lx} {(top + bot) / 2:.0f})">{esc(label)}</text>')
        return out

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'font-family="sans-serif" viewBox="0 0 {W} {H}">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="22" font-size="15" text-anchor="middle">{esc(title)}</text>']
    # Warm-up shading and round boundaries on both panels.
    for top, bot in panels:
        wx = X(min(warm_s / 60, tmax))
        parts.append(f'<rect x="{ml}" y="{top}" width="{wx - ml:.1f}" height="{bot - top}" fill="#f4f4f4"/>')
        parts.append(f'<rect x="{ml}" y="{top}" width="{W - ml - mr}" height="{bot - top}" '
                     f'fill="none" stroke="#999"/>')
        prev = None
        for r in rows:
            if r["round"] != prev and prev is not None:
                x = X(r["t_s"] / 60)
                parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bot}" stroke="#ddd" '
                             'stroke-dasharray="3,3"/>')
            prev = r["round"]
    # Panel 1: RSS (MiB), fitted line after warm-up.
    top, bot = panels[0]
    rss = [r["rss_kib"] / 1024 for r in rows]
    Y, lo, hi = scale(rss, top, bot)
    parts += axes(top, bot, lo, hi, Y, "server RSS (MiB)", "#c0392b")
    parts.append(poly([(X(t), Y(v)) for t, v in zip(ts, rss)], "#c0392b"))
    if fit[0] is not None:
        b, a = fit  # KiB per minute, KiB
        t1 = warm_s / 60
        parts.append(poly([(X(t1), Y((a + b * t1) / 1024)), (X(tmax), Y((a + b * tmax) / 1024))],
                          "#2c3e50", 1))
    parts.append(f'<text x="{ml + 8}" y="{top + 16}" font-size="11" fill="#555">grey: warm-up; '
                 'dark line: least-squares fit after warm-up; dashed: round boundaries</text>')
    # Panel 2: connections (left axis) and open descriptors (right axis).
    top, bot = panels[1]
    conns = [r["connections"] for r in rows]
    Y, lo, hi = scale(conns, top, bot)
    parts += axes(top, bot, lo, hi, Y, "WebSocket connections", "#2980b9")
    parts.append(poly([(X(t), Y(v)) for t, v in zip(ts, conns)], "#2980b9"))
    fds = [r["fds"] for r in rows]
    Y2, lo2, hi2 = scale(fds, top, bot)
    parts += axes(top, bot, lo2, hi2, Y2, "server file descriptors", "#27ae60", right=True)
    parts.append(poly([(X(t), Y2(v)) for t, v in zip(ts, fds)], "#27ae60", 1))
    # Time axis.
    step = max(1, math.ceil(tmax / 10))
    for i in range(0, int(tmax) + 1, step):
        x = X(i)
        for top, bot in panels:
            parts.append(f'<line x1="{x:.1f}" y1="{bot}" x2="{x:.1f}" y2="{bot + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{panels[1][1] + 18}" font-size="11" '
                     f'text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 20}" font-size="12" '
                 'text-anchor="middle">minutes</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


def cmd_report(args):
    d = args.dir
    rows = []
    with open(os.path.join(d, "samples.csv")) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v) if "." in v else int(v)
                except (TypeError, ValueError):
                    row[k] = v
            rows.append(row)
    rows = [r for r in rows if isinstance(r.get("rss_kib"), int)]
    failures = []
    notes = []
    run_s = rows[-1]["t_s"] if rows else 0
    warm_s = max(180.0, 0.2 * run_s)
    post = [r for r in rows if r["t_s"] >= warm_s]
    if len(post) >= 12 and run_s - warm_s >= 120:
        b, a = lsq([r["t_s"] / 60 for r in post], [r["rss_kib"] for r in post])
    else:
        b = a = None
        notes.append(f"run of {run_s / 60:.1f} min is too short for the slope check "
                     f"(warm-up {warm_s / 60:.1f} min, then at least 2 min)")
    fd_b, _ = lsq([r["t_s"] / 60 for r in post], [r["fds"] for r in post]) if len(post) >= 12 else (None, None)
    if b is not None and b > args.slope_bound:
        failures.append(f"RSS grows {b:.0f} KiB/min after warm-up (bound {args.slope_bound:.0f} KiB/min)")

    # Rounds.
    rounds = []
    rdir = os.path.join(d, "rounds")
    for name in sorted(os.listdir(rdir), key=lambda s: int(s) if s.isdigit() else 0):
        rp = os.path.join(rdir, name)
        rr = {"round": int(name)}
        for g in ("echo", "broadcast", "channel", "churn", "idle", "api", "hostile"):
            rr[g] = last_json(os.path.join(rp, f"{g}.out"))
            rcf = os.path.join(rp, f"{g}.rc")
            rr[g + "_rc"] = open(rcf).read().strip() if os.path.exists(rcf) else "missing"
        rounds.append(rr)
    totals = {"echo": 0, "broadcast": 0, "channel": 0, "churn": 0, "idle": 0, "api": 0}
    loss = {"broadcast": 0, "channel": 0, "api": 0}
    errors = {"echo": 0, "broadcast": 0, "channel": 0, "churn": 0, "idle": 0}
    hostile = {}
    for rr in rounds:
        n = rr["round"]
        for g in ("echo", "broadcast", "channel", "churn", "idle"):
            j = rr[g]
            if rr[g + "_rc"] != "0" or j is None:
                failures.append(f"round {n}: ringcast-load {g} failed (exit {rr[g + '_rc']}), "
                                f"see rounds/{n}/{g}.out")
                continue
            totals[g] += j["opened"] if g == "idle" else j["count"]
            errors[g] += j["errors"]
            if j["errors"]:
                failures.append(f"round {n}: ringcast-load {g}: {j['errors']} errors")
            if g in ("broadcast", "channel"):
                loss[g] += j["loss"] or 0
                if j["loss"]:
                    failures.append(f"round {n}: {g} lost {j['loss']} of {j['expected']} deliveries")
                if not j["published"]:
                    failures.append(f"round {n}: {g} published nothing")
        j = rr["api"]
        if rr["api_rc"] != "0" or j is None:
            failures.append(f"round {n}: apicheck failed (exit {rr['api_rc']})")
        else:
            totals["api"] += j["received"]
            loss["api"] += j["lost"]
            if j["lost"] or j["duplicates"] or j["out_of_order"] or j["http_errors"] or j["subscriber_error"]:
                failures.append(f"round {n}: API publish check: {j}")
        j = rr["hostile"]
        if rr["hostile_rc"] != "0" or j is None:
            failures.append(f"round {n}: hostile clients failed (exit {rr['hostile_rc']})")
        else:
            for kind, k in j["kinds"].items():
                h = hostile.setdefault(kind, {"runs": 0, "ok": 0, "bad": 0, "bad_examples": []})
                h["runs"] += k["runs"]
                h["ok"] += k["ok"]
                h["bad"] += k["bad"]
                h["bad_examples"] += [f"round {n}: {e}" for e in k["bad_examples"]][:3]
            for e in j["errors"]:
                failures.append(f"round {n}: hostile: {e}")
    for kind, h in hostile.items():
        if h["bad"]:
            failures.append(f"hostile {kind}: {h['bad']} of {h['runs']} not handled as expected "
                            f"(e.g. {h['bad_examples'][:2]})")
    if not rounds:
        failures.append("no rounds ran")
    if args.panics:
        failures.append(f"the server log has {args.panics} panic line(s)")
    if args.server_died:
        failures.append(f"the server exited unexpectedly: {args.server_died}")
    if args.exit_status != "0":
        failures.append(f"the server's exit status after SIGTERM was {args.exit_status}, not 0")
    if any(r.get("metrics_ok") == 0 for r in rows):
        failures.append(f"/metrics failed in {sum(1 for r in rows if r.get('metrics_ok') == 0)} samples")

    title = (f"ringcast soak: {run_s / 60:.1f} min, {len(rounds)} rounds"
             + (f", RSS slope {b:+.0f} KiB/min after warm-up" if b is not None else ""))
    svg_plot(rows, warm_s, (b, a), os.path.join(d, "soak.svg"), title)

    def mib(k):
        return f"{k / 1024:.1f} MiB"
    at_warm = next((r for r in rows if r["t_s"] >= warm_s), rows[-1])
    peak = max(rows, key=lambda r: r["rss_kib"])
    last = rows[-1]
    first = rows[0]
    verdict = "PASS" if not failures else "FAIL"
    L = []
    L.append(f"# ringcast soak: {verdict}\n")
    L.append(f"- Date: {args.date}; commit {args.commit}; host: {args.host}")
    L.append(f"- Server: `{args.server_cmd}`")
    L.append(f"- Duration: {run_s / 60:.1f} min sampled every {args.interval:g} s ({len(rows)} samples), "
             f"{len(rounds)} rounds of about {args.round_s} s")
    L.append(f"- Load per round: {args.load}")
    L.append("")
    L.append("## Memory\n")
    L.append(f"Bound: RSS least-squares slope after warm-up (the first {warm_s / 60:.1f} min: "
             f"3 min or 20% of the run, whichever is larger) at most **{args.slope_bound:.0f} KiB/min**.\n")
    L.append("| | RSS | file descriptors | connections |")
    L.append("|---|---|---|---|")
    L.append(f"| start | {mib(first['rss_kib'])} | {first['fds']} | {first['connections']} |")
    L.append(f"| end of warm-up ({at_warm['t_s'] / 60:.1f} min) | {mib(at_warm['rss_kib'])} | {at_warm['fds']} "
             f"| {at_warm['connections']} |")
    L.append(f"| peak ({peak['t_s'] / 60:.1f} min) | {mib(peak['rss_kib'])} | {max(r['fds'] for r in rows)} "
             f"| {max(r['connections'] for r in rows)} |")
    L.append(f"| end ({last['t_s'] / 60:.1f} min, after the last round) | {mib(last['rss_kib'])} | {last['fds']} "
             f"| {last['connections']} |")
    L.append("")
    if b is not None:
        L.append(f"- RSS slope after warm-up: **{b:+.1f} KiB/min** ({len(post)} samples) -> "
                 f"{'within' if b <= args.slope_bound else 'OVER'} the bound")
    if fd_b is not None:
        L.append(f"- Descriptor slope after warm-up: {fd_b:+.2f} fds/min")
    L.append(f"- Peak RSS high-water mark (VmHWM): {mib(max(r['hwm_kib'] for r in rows))}")
    for n in notes:
        L.append(f"- Note: {n}")
    L.append("")
    L.append("## Messages\n")
    L.append("| traffic | total | loss | generator errors |")
    L.append("|---|---|---|---|")
    L.append(f"| echo (messages) | {totals['echo']:,} | - | {errors['echo']} |")
    L.append(f"| /broadcast (deliveries) | {totals['broadcast']:,} | {loss['broadcast']} | {errors['broadcast']} |")
    L.append(f"| /ws channel (deliveries) | {totals['channel']:,} | {loss['channel']} | {errors['channel']} |")
    L.append(f"| POST /api/publish -> /ws (messages) | {totals['api']:,} | {loss['api']} | - |")
    L.append(f"| churn (connect, echo, close cycles) | {totals['churn']:,} | - | {errors['churn']} |")
    L.append(f"| idle (connections held through heartbeats) | {totals['idle']:,} | - | {errors['idle']} |")
    L.append("")
    L.append("Per round (loss = deliveries expected minus received):\n")
    L.append("| round | echo msgs | broadcast deliveries / loss | channel deliveries / loss "
             "| api msgs / loss | churn cycles | hostile runs / bad |")
    L.append("|---|---|---|---|---|---|---|")

    def g(j, k, default="?"):
        return j.get(k, default) if j else default
    for rr in rounds:
        L.append(f"| {rr['round']} | {g(rr['echo'], 'count'):,} | {g(rr['broadcast'], 'count'):,} / "
                 f"{g(rr['broadcast'], 'loss')} | {g(rr['channel'], 'count'):,} / {g(rr['channel'], 'loss')} "
                 f"| {g(rr['api'], 'received')} / {g(rr['api'], 'lost')} | {g(rr['churn'], 'count'):,} "
                 f"| {g(rr['hostile'], 'runs')} / {g(rr['hostile'], 'bad')} |")
    L.append("")
    L.append("## Hostile clients\n")
    L.append("| kind | runs | handled as expected | not |")
    L.append("|---|---|---|---|")
    for kind in sorted(hostile):
        h = hostile[kind]
        L.append(f"| {kind} | {h['runs']} | {h['ok']} | {h['bad']} |")
    L.append("")
    L.append("## Server counters at the end\n")
    L.append("| counter | value |")
    L.append("|---|---|")
    ref = next((r for r in reversed(rows) if r.get("metrics_ok") == 1), rows[-1])
    for col, name in COUNTERS + [("upgrades", 'ringcast_handshakes_total{outcome="upgraded"}'),
                                 ("upgrades_refused", "ringcast_handshakes_total{outcome=refused, unauthorized, forbidden "
                                                      "or over_capacity}")]:
        L.append(f"| `{name}` | {ref.get(col, '?'):,} |" if isinstance(ref.get(col), int)
                 else f"| `{name}` | {ref.get(col, '?')} |")
    L.append("")
    L.append("## Checks\n")
    L.append(f"- Panics in the server log: {args.panics}")
    L.append(f"- Server alive through every round: {'no: ' + args.server_died if args.server_died else 'yes'}")
    L.append(f"- Exit status after SIGTERM: {args.exit_status}")
    if failures:
        L.append("\n## Failures\n")
        for fl in failures:
            L.append(f"- {fl}")
    L.append("")
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write("\n".join(L))
    print("\n".join(L))
    sys.exit(1 if failures else 0)


def cmd_roundline(args):
    """One line of progress for a finished round."""
    def j(name):
        return last_json(os.path.join(args.dir, f"{name}.out")) or {}

    def rc(name):
        try:
            with open(os.path.join(args.dir, f"{name}.rc")) as f:
                return f.read().strip()
        except OSError:
            return "missing"
    parts = []
    bad = False
    for g in ("echo", "broadcast", "channel", "churn", "idle", "api", "hostile"):
        x = j(g)
        if rc(g) != "0" or not x:
            parts.append(f"{g} FAILED (exit {rc(g)})")
            bad = True
        elif g in ("broadcast", "channel"):
            parts.append(f"{g} {x['count']:,} deliveries, loss {x['loss']}, errors {x['errors']}")
            bad |= bool(x["loss"] or x["errors"])
        elif g == "api":
            parts.append(f"api {x['received']}/{x['published']}, lost {x['lost']}")
            bad |= bool(x["lost"] or x["http_errors"] or x["duplicates"] or x["out_of_order"])
        elif g == "hostile":
            parts.append(f"hostile {x['runs']} runs, {x['bad']} bad")
            bad |= bool(x["bad"])
        elif g == "idle":
            parts.append(f"idle {x['opened']} held, errors {x['errors']}")
            bad |= bool(x["errors"])
        else:
            parts.append(f"{g} {x['count']:,}, errors {x['errors']}")
            bad |= bool(x["errors"])
    print(f"round {args.round}{' (PROBLEM)' if bad else ''}: " + "; ".join(parts), flush=True)
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hostile")
    h.add_argument("--addr", required=True)
    h.add_argument("--seconds", type=float, required=True)
    h.add_argument("--api-key", required=True)
    h.add_argument("--handshake-timeout", type=float, required=True)
    h.add_argument("--silent-limit", type=float, default=20)
    h.add_argument("--rate-limit", type=float, default=0)
    h.add_argument("--max-header-bytes", type=int, default=8192)
    h.add_argument("--max-message-bytes", type=int, default=16 << 20)
    a = sub.add_parser("apicheck")
    a.add_argument("--addr", required=True)
    a.add_argument("--api-key", required=True)
    a.add_argument("--channel", default="soak-api")
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--rate", type=float, default=20)
    s = sub.add_parser("sample")
    s.add_argument("--addr", required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--interval", type=float, default=5)
    s.add_argument("--out", required=True)
    s.add_argument("--stop-file", required=True)
    s.add_argument("--round-file", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--slope-bound", type=float, required=True)
    r.add_argument("--interval", type=float, default=5)
    r.add_argument("--round-s", default="?")
    r.add_argument("--panics", type=int, default=0)
    r.add_argument("--server-died", default="")
    r.add_argument("--exit-status", default="0")
    r.add_argument("--server-cmd", default="")
    r.add_argument("--load", default="")
    r.add_argument("--commit", default="")
    r.add_argument("--date", default="")
    r.add_argument("--host", default="")
    q = sub.add_parser("roundline")
    q.add_argument("--dir", required=True)
    q.add_argument("--round", required=True)
    args = p.parse_args()
    {"hostile": cmd_hostile, "apicheck": cmd_apicheck, "sample": cmd_sample, "report": cmd_report,
     "roundline": cmd_roundline}[args.cmd](args)


if __name__ == "__main__":
    main()
