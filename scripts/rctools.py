"""What ringcast's Python scripts share (standard library only): a minimal
blocking WebSocket client, /proc sampling of the server process, the
/metrics scrape, and SVG documents."""

import base64
import json
import os
import socket
import struct
import threading
import urllib.request


def addr_str(addr):
    """"host:port" from a string or a (host, port) tuple."""
    return addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"


# --------------------------------------------------------------------------
# WebSocket client



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
    host, _, port = addr_str(addr).rpartition(":")
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


def ws_client(addr, path="/ws", **kw):
    """A /ws connection with its welcome read (kept in .welcome)."""
    ws = WS(addr, path, **kw)
    try:
        ws.expect_welcome()
    except BaseException:
        ws.shutdown()
        raise
    return ws


class WS:
    def __init__(self, addr, path, timeout=10.0, rcvbuf=None, auto_pong=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(split_addr(addr))
            key = base64.b64encode(os.urandom(16)).decode()
            req = (f"GET {path} HTTP/1.1\r\nHost: {addr_str(addr)}\r\nUpgrade: websocket\r\n"
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
        self.welcome = None

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

    def recv_json(self):
        """The next text frame as JSON."""
        op, payload = self.recv()
        if op != 0x1:
            raise ValueError(f"expected a text frame, got opcode {op}")
        return json.loads(payload)

    def expect_welcome(self):
        """Reads the welcome every /ws connection starts with
        ({"type":"welcome","client":ID,"core":N,"ping_ms":P}); keeps it in
        self.welcome and returns it."""
        msg = self.recv_json()
        if msg.get("type") != "welcome":
            raise ValueError(f"expected the /ws welcome first, got {str(msg)[:100]}")
        self.welcome = msg
        return msg

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



# --------------------------------------------------------------------------
# the server process and its metrics

def proc_status(pid):
    """(VmRSS KiB, VmHWM KiB, threads) of a process, from /proc/PID/status."""
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


def rss(pid):
    """Resident set size in bytes."""
    kib = proc_status(pid)[0]
    if kib is None:
        raise ProcessLookupError(f"no VmRSS for pid {pid}")
    return kib * 1024


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's RSS every 50 ms on a thread; keeps the peak."""

    def __init__(self, pid):
        self.pid = pid
        self.before = rss(pid)
        self.peak = self.before
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except OSError:
                return

    def finish(self):
        self.stop.set()
        self.thread.join()
        after = rss(self.pid)
        self.peak = max(self.peak, after)
        return after


def scrape(addr, timeout=5):
    """The server's /metrics text."""
    with urllib.request.urlopen(f"http://{addr_str(addr)}/metrics", timeout=timeout) as r:
        return r.read().decode()


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



# --------------------------------------------------------------------------
# SVG

def svg_escape(s):
    """Text for an SVG text node."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_doc(w, h, title, body, title_attrs='x="10" y="20" font-size="14" font-weight="bold"'):
    """A complete SVG document: white background, a title, then `body` (a
    list of elements)."""
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'font-family="sans-serif" font-size="12" viewBox="0 0 {w} {h}">',
            f'<rect width="{w}" height="{h}" fill="white"/>',
            f'<text {title_attrs}>{svg_escape(title)}</text>']
    return "\n".join(head + list(body) + ["</svg>"]) + "\n"
