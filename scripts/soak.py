#!/usr/bin/env python3
"""Helpers for scripts/soak.sh (python3 standard library only).

Subcommands:
  hostile   misbehaving clients for a while; each must be cut off the way the
            server promises (close code, HTTP status, timeout); prints JSON
  apicheck  a /ws subscriber plus POST /api/publish with numbered messages;
            every one must arrive once, in order; prints JSON
  sample    samples server RSS, descriptors and /metrics into a CSV

The report over those samples is scripts/soak_report.py.
"""

import argparse
import csv
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import urllib.error

from rctools import Closed, HandshakeRefused, WS, frame, ws_client, http_head, parse_metrics, proc_status, scrape, split_addr

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
        ws = ws_client(a, "/ws", timeout=10)
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
    sub = ws_client(args.addr, "/ws", rcvbuf=4096)
    pub = None
    try:
        sub.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
        op, payload = sub.recv()
        if json.loads(payload).get("type") != "ack":
            tally.add("never-reading-subscriber", False, f"subscribe reply {payload[:80]!r}")
            return
        pub = ws_client(args.addr, "/ws")
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
    sub = ws_client(args.addr, "/ws")
    sub.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 7}))
    op, payload = sub.recv()
    ack = json.loads(payload)
    if ack.get("type") != "ack":
        print(json.dumps({"error": f"subscribe: {payload[:100]!r}", "lost": None}))
        sys.exit(1)
    got = []
    other = []
    sub_error = []
    # Messages carry the channel's offset, consecutive from the ack's.
    last_offset = [ack.get("offset", 0)]
    offset_gaps = [0]

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
                if m.get("offset") != last_offset[0] + 1:
                    offset_gaps[0] += 1
                last_offset[0] = m.get("offset", last_offset[0] + 1)
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
    # Out of order by payload, or offsets not consecutive.
    out_of_order = sum(1 for a, b in zip(got, got[1:]) if b <= a) + offset_gaps[0]
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
                sums, ok, other = parse_metrics(scrape(args.addr))
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
    args = p.parse_args()
    {"hostile": cmd_hostile, "apicheck": cmd_apicheck, "sample": cmd_sample}[args.cmd](args)


if __name__ == "__main__":
    main()
