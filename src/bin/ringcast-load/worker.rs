//! One generator thread: a single epoll loop (mio) driving its share of the
//! connections. Frames are encoded once up front; every read is drained
//! completely and answered with one write, so the generator makes about two
//! syscalls per batch of messages, not per message.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::wire::{self, now_ns};

/// What the run does.
#[derive(Clone, Debug)]
pub enum Scenario {
    /// Closed loop: every connection keeps `in_flight` messages of `size`
    /// bytes outstanding on `/echo`.
    Echo {
        in_flight: usize,
        size: usize,
        binary: bool,
    },
    /// `subscribers` on `/broadcast`; one publisher sends `rate` messages/s
    /// of `size` bytes, evenly paced (open loop).
    Broadcast { rate: u64, size: usize },
    /// Connections opened (at most `concurrency` handshakes at a time per
    /// thread) and held.
    Idle { concurrency: usize },
    /// Loops of connect → handshake → one echo → close.
    Churn,
}

/// Everything a worker needs to know; shared read-only.
pub struct Plan {
    pub addr: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub scenario: Scenario,
    /// Connections (or churn loops) per worker, indexed by worker id.
    pub conns_per_worker: Vec<usize>,
    /// Index of the first connection of each worker (source spreading).
    pub first_conn: Vec<usize>,
    /// Broadcast: the worker that hosts the publisher.
    pub publisher_worker: usize,
}

/// Coordination between the workers and the main thread.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Connections that completed their handshake.
    pub opened: AtomicUsize,
    /// Connections that failed to open.
    pub failed: AtomicUsize,
    /// Measurement window (monotonic ns); 0 until the main thread sets it.
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    /// Broadcast: publishing starts once this is set (all subscribed).
    pub publish: AtomicBool,
    /// Broadcast: deliveries of in-window messages seen so far (all workers).
    pub delivered: AtomicU64,
    /// Broadcast: messages published inside the window.
    pub published_in_window: AtomicU64,
}

/// What a worker measured inside the window.
pub struct Outcome {
    /// Messages (echo: echoes received; broadcast: deliveries; churn: cycles).
    pub count: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    /// Broadcast: messages the publisher sent inside the window.
    pub published: u64,
    /// Broadcast: largest lateness of the publisher against its schedule.
    pub publisher_lag_us: u64,
    /// Errors: connects refused, unexpected closes, bad responses.
    pub errors: u64,
    /// Handshake durations (connect start to 101), microseconds.
    pub handshake_us: Histogram<u64>,
    /// Connections this worker opened successfully.
    pub opened: u64,
    /// When the last of them completed its handshake (monotonic ns).
    pub last_open_ns: u64,
    /// First error message, for the report.
    pub first_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    /// Churn: close frame sent, waiting for the server's.
    Closing,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Role {
    Echo,
    Subscriber,
    Publisher,
    Idle,
    Churn,
}

struct Conn {
    sock: TcpStream,
    phase: Phase,
    role: Role,
    /// Read buffer, zeroed once when it grows (never per read): bytes
    /// `rstart..rend` are unprocessed input.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    woff: usize,
    /// Echo: send times of messages in flight, oldest first.
    sent: VecDeque<u64>,
    started: u64,
    /// Global connection number (source address choice, churn slot).
    number: usize,
}

/// Initial read buffer per connection; grows (doubling) only when a frame
/// does not fit.
const READ_BUF: usize = 4096;
const TIMER: Token = Token(usize::MAX - 1);

/// One generator thread.
pub struct Worker {
    id: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections still to open (idle/echo/broadcast) or loops (churn).
    to_open: usize,
    connecting: usize,
    next_number: usize,
    request_echo: Vec<u8>,
    request_broadcast: Vec<u8>,
    /// Echo: `in_flight` copies of the message frame, back to back.
    echo_batch: Vec<u8>,
    echo_frame_len: usize,
    /// Broadcast publisher.
    pub_frame: Vec<u8>,
    pub_off: usize,
    pub_token: Option<usize>,
    pub_seq: u64,
    pub_timer: Option<OwnedFd>,
    pub_interval_ns: u64,
    pub_next_ns: u64,
    out: Outcome,
    delivered_unreported: u64,
    payload_len: usize,
}

impl Worker {
    /// A worker for thread `id`.
    pub fn new(id: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> io::Result<Worker> {
        let host = plan.addr.to_string();
        let (echo_batch, echo_frame_len, payload_len) = match plan.scenario {
            Scenario::Echo {
                in_flight,
                size,
                binary,
            } => {
                let payload: Vec<u8> = if binary {
                    (0..size).map(|i| (i * 7 + 3) as u8).collect()
                } else {
                    vec![b'x'; size]
                };
                let f =
                    wire::masked_frame(if binary { wire::BINARY } else { wire::TEXT }, &payload);
                (f.repeat(in_flight.max(1)), f.len(), size)
            }
            Scenario::Churn => {
                let f = wire::masked_frame(wire::TEXT, &[b'x'; 32]);
                let n = f.len();
                (f, n, 32)
            }
            Scenario::Broadcast { size, .. } => (Vec::new(), 0, size),
            Scenario::Idle { .. } => (Vec::new(), 0, 0),
        };
        let (pub_frame, pub_off) = match plan.scenario {
            Scenario::Broadcast { size, .. } => {
                let size = size.max(16);
                let f = wire::masked_frame(wire::BINARY, &vec![0u8; size]);
                (f, wire::payload_offset(size))
            }
            _ => (Vec::new(), 0),
        };
        Ok(Worker {
            id,
            to_open: plan.conns_per_worker[id],
            next_number: plan.first_conn[id],
            plan,
            shared,
            poll: Poll::new()?,
            conns: Vec::new(),
            free: Vec::new(),
            connecting: 0,
            request_echo: wire::upgrade_request(&host, "/echo"),
            request_broadcast: wire::upgrade_request(&host, "/broadcast"),
            echo_batch,
            echo_frame_len,
            pub_frame,
            pub_off,
            pub_token: None,
            pub_seq: 0,
            pub_timer: None,
            pub_interval_ns: 0,
            pub_next_ns: 0,
            out: Outcome {
                count: 0,
                bytes: 0,
                latency_us: histogram(),
                published: 0,
                publisher_lag_us: 0,
                errors: 0,
                handshake_us: histogram(),
                opened: 0,
                last_open_ns: 0,
                first_error: None,
            },
            delivered_unreported: 0,
            payload_len,
        })
    }

    /// Runs until the main thread says stop.
    pub fn run(mut self) -> Outcome {
        let mut events = Events::with_capacity(1024);
        let is_publisher_host = matches!(self.plan.scenario, Scenario::Broadcast { .. })
            && self.id == self.plan.publisher_worker;
        let mut publisher_pending = is_publisher_host;
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.open_more();
            if publisher_pending && self.shared.publish.load(Ordering::Acquire) {
                publisher_pending = false;
                self.start_publisher();
            }
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(5))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.error(format!("poll: {e}"));
                }
                continue;
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.publish_due();
                    continue;
                }
                let t = ev.token().0;
                if ev.is_writable() || ev.is_error() {
                    self.on_writable(t);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(t);
                }
            }
            if self.delivered_unreported > 0 {
                self.shared.delivered.fetch_add(
                    std::mem::take(&mut self.delivered_unreported),
                    Ordering::Relaxed,
                );
            }
        }
        self.out
    }

    fn window(&self, t: u64) -> bool {
        let s = self.shared.window_start.load(Ordering::Relaxed);
        s != 0 && t >= s && t < self.shared.window_end.load(Ordering::Relaxed)
    }

    fn error(&mut self, msg: String) {
        self.out.errors += 1;
        if self.out.first_error.is_none() {
            self.out.first_error = Some(msg);
        }
    }

    // ----- connection set-up --------------------------------------------

    fn open_more(&mut self) {
        let limit = match self.plan.scenario {
            Scenario::Idle { concurrency } => concurrency.max(1),
            _ => 256,
        };
        while self.to_open > 0 && self.connecting < limit {
            self.to_open -= 1;
            let number = self.next_number;
            self.next_number += 1;
            if let Err(e) = self.connect(number) {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.error(format!("connect: {e}"));
                if matches!(self.plan.scenario, Scenario::Churn) {
                    // Keep the loop count: retry this slot later.
                    self.to_open += 1;
                    break;
                }
            }
        }
    }

    fn connect(&mut self, number: usize) -> io::Result<()> {
        let domain = if self.plan.addr.is_ipv6() {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
        s.set_tcp_nodelay(true)?;
        if self.plan.sources.len() > 1 {
            let ip = self.plan.sources[number % self.plan.sources.len()];
            // Let connect() choose the port, so each source address has its
            // own 28k ports towards the server.
            // SAFETY: setsockopt on our own socket with an int option.
            unsafe {
                let one: libc::c_int = 1;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match s.connect(&self.plan.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        // SAFETY: the socket2 socket is converted into a std stream we own.
        let std_stream =
            unsafe { std::net::TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(s)) };
        let mut sock = TcpStream::from_std(std_stream);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.poll.registry().register(
            &mut sock,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let role = match self.plan.scenario {
            Scenario::Echo { .. } => Role::Echo,
            Scenario::Broadcast { .. } => Role::Subscriber,
            Scenario::Idle { .. } => Role::Idle,
            Scenario::Churn => Role::Churn,
        };
        self.conns[idx] = Some(Conn {
            sock,
            phase: Phase::Connecting,
            role,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            woff: 0,
            sent: VecDeque::new(),
            started: now_ns(),
            number,
        });
        self.connecting += 1;
        Ok(())
    }

    fn start_publisher(&mut self) {
        let Scenario::Broadcast { rate, .. } = self.plan.scenario else {
            return;
        };
        // The publisher is one more /broadcast connection, on this worker.
        let number = usize::MAX / 2;
        if let Err(e) = self.connect(number) {
            self.error(format!("publisher connect: {e}"));
            return;
        }
        let idx = self
            .conns
            .iter()
            .rposition(|c| c.as_ref().is_some_and(|c| c.number == number));
        if let Some(i) = idx {
            if let Some(c) = self.conns[i].as_mut() {
                c.role = Role::Publisher;
            }
            self.pub_token = Some(i);
        }
        self.pub_interval_ns = 1_000_000_000 / rate.max(1);
    }

    fn arm_timer(&mut self) {
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            self.error(format!("timerfd: {}", io::Error::last_os_error()));
            return;
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ns = self.pub_interval_ns;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1000,
            },
        };
        // SAFETY: arming our own timerfd.
        unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)
        {
            self.error(format!("timer register: {e}"));
        }
        self.pub_next_ns = now_ns();
        self.pub_timer = Some(fd);
    }

    /// Sends every message whose slot in the schedule has come.
    fn publish_due(&mut self) {
        let Some(fd) = &self.pub_timer else { return };
        let mut ticks = 0u64;
        // SAFETY: reading the expiration count from our timerfd.
        unsafe { libc::read(fd.as_raw_fd(), (&mut ticks as *mut u64).cast(), 8) };
        let Some(t) = self.pub_token else { return };
        let now = now_ns();
        let mut batch = Vec::new();
        while self.pub_next_ns <= now {
            let lag = (now - self.pub_next_ns) / 1000;
            self.out.publisher_lag_us = self.out.publisher_lag_us.max(lag);
            self.pub_next_ns += self.pub_interval_ns;
            let mut f = self.pub_frame.clone();
            wire::write_masked(&mut f, self.pub_off, 0, &self.pub_seq.to_le_bytes());
            wire::write_masked(&mut f, self.pub_off, 8, &now.to_le_bytes());
            self.pub_seq += 1;
            if self.window(now) {
                self.out.published += 1;
                self.shared
                    .published_in_window
                    .fetch_add(1, Ordering::Relaxed);
            }
            batch.extend_from_slice(&f);
        }
        if !batch.is_empty() {
            self.send(t, &batch);
        }
    }

    // ----- I/O ------------------------------------------------------------

    fn on_writable(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
            return;
        };
        if c.phase == Phase::Connecting {
            match c.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(t, format!("connect: {e}")),
            }
            if c.sock.peer_addr().is_err() {
                return; // not connected yet
            }
            c.phase = Phase::Handshake;
            let req = if matches!(self.plan.scenario, Scenario::Broadcast { .. }) {
                self.request_broadcast.clone()
            } else {
                self.request_echo.clone()
            };
            self.send(t, &req);
            return;
        }
        self.flush(t);
    }

    /// Queues bytes and writes as much as the socket takes.
    fn send(&mut self, t: usize, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
            return;
        };
        if c.woff == c.wbuf.len() {
            c.wbuf.clear();
            c.woff = 0;
            match c.sock.write(bytes) {
                Ok(n) if n == bytes.len() => {}
                Ok(n) => c.wbuf.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.wbuf.extend_from_slice(bytes),
                Err(e) => self.fail(t, format!("write: {e}")),
            }
        } else {
            c.wbuf.extend_from_slice(bytes);
        }
    }

    fn flush(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
            return;
        };
        while c.woff < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.woff..]) {
                Ok(0) => break,
                Ok(n) => c.woff += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return self.fail(t, format!("write: {e}")),
            }
        }
        if c.woff == c.wbuf.len() {
            c.wbuf.clear();
            c.woff = 0;
        }
    }

    fn on_readable(&mut self, t: usize) {
        loop {
            let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
                return;
            };
            if c.phase == Phase::Connecting {
                return;
            }
            if c.rstart == c.rend {
                c.rstart = 0;
                c.rend = 0;
            }
            // Make room: move unprocessed bytes to the front, or grow.
            if c.rend == c.rbuf.len() {
                if c.rstart > 0 {
                    c.rbuf.copy_within(c.rstart..c.rend, 0);
                    c.rend -= c.rstart;
                    c.rstart = 0;
                } else {
                    let n = c.rbuf.len() * 2;
                    c.rbuf.resize(n, 0);
                }
            }
            let room = c.rbuf.len() - c.rend;
            let r = c.sock.read(&mut c.rbuf[c.rend..]);
            match r {
                Ok(0) => return self.on_eof(t),
                Ok(n) => {
                    c.rend += n;
                    self.process(t);
                    if n < room {
                        // A short read took everything the socket had. On
                        // Linux every later arrival raises a new edge-
                        // triggered event, so the extra read that would only
                        // return EAGAIN is skipped (a third of the syscalls
                        // in echo-lat).
                        return;
                    }
                }
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return self.fail(t, format!("read: {e}"));
                }
            }
        }
    }

    fn on_eof(&mut self, t: usize) {
        let phase = self.conns[t].as_ref().map(|c| c.phase);
        if phase == Some(Phase::Closing) {
            // Churn: the server closed after the handshake; done.
            self.finish_cycle(t);
        } else {
            self.fail(t, "connection closed by the server".into());
        }
    }

    /// Handles whatever complete input the connection has buffered.
    fn process(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
            return;
        };
        if c.phase == Phase::Handshake {
            let Some(end) = wire::head_end(&c.rbuf[c.rstart..c.rend]) else {
                return;
            };
            if !c.rbuf[c.rstart..c.rend].starts_with(b"HTTP/1.1 101") {
                let line =
                    String::from_utf8_lossy(&c.rbuf[c.rstart..c.rstart + end.min(64)]).into_owned();
                return self.fail(
                    t,
                    format!("upgrade refused: {}", line.lines().next().unwrap_or("")),
                );
            }
            c.rstart += end;
            c.phase = Phase::Open;
            let role = c.role;
            let now = now_ns();
            self.out
                .handshake_us
                .saturating_record((now - c.started) / 1000);
            self.out.opened += 1;
            self.out.last_open_ns = now;
            self.connecting -= 1;
            self.shared.opened.fetch_add(1, Ordering::Relaxed);
            match role {
                Role::Echo => {
                    let batch = std::mem::take(&mut self.echo_batch);
                    let n = batch.len() / self.echo_frame_len.max(1);
                    if let Some(c) = self.conns[t].as_mut() {
                        c.sent.extend(std::iter::repeat_n(now, n));
                    }
                    self.send(t, &batch);
                    self.echo_batch = batch;
                }
                Role::Churn => {
                    let f = self.echo_batch.clone();
                    if let Some(c) = self.conns[t].as_mut() {
                        c.sent.push_back(now);
                    }
                    self.send(t, &f);
                }
                Role::Publisher => self.arm_timer(),
                Role::Subscriber | Role::Idle => {}
            }
        }
        self.frames(t);
    }

    /// Consumes complete server frames.
    fn frames(&mut self, t: usize) {
        let mut replies = 0usize;
        let mut closed = false;
        let now = now_ns();
        let in_window = self.window(now);
        let (ws, we) = (
            self.shared.window_start.load(Ordering::Relaxed),
            self.shared.window_end.load(Ordering::Relaxed),
        );
        let window = |ts: u64| ws != 0 && ts >= ws && ts < we;
        {
            let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
                return;
            };
            while let Some((op, hl, len)) = wire::server_frame(&c.rbuf[c.rstart..c.rend]) {
                let p = c.rstart + hl;
                match (op, c.role) {
                    (wire::CLOSE, _) => {
                        closed = true;
                        c.rstart += hl + len;
                        break;
                    }
                    (wire::TEXT | wire::BINARY, Role::Echo) => {
                        let sent = c.sent.pop_front().unwrap_or(now);
                        if in_window {
                            self.out.count += 1;
                            self.out.bytes += len as u64;
                            self.out.latency_us.saturating_record((now - sent) / 1000);
                        }
                        replies += 1;
                    }
                    (wire::TEXT | wire::BINARY, Role::Subscriber) if len >= 16 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&c.rbuf[p + 8..p + 16]);
                        let ts = u64::from_le_bytes(b);
                        if window(ts) {
                            self.out.count += 1;
                            self.out.bytes += len as u64;
                            self.out
                                .latency_us
                                .saturating_record(now.saturating_sub(ts) / 1000);
                            self.delivered_unreported += 1;
                        }
                    }
                    (wire::TEXT | wire::BINARY, Role::Churn) => replies += 1,
                    _ => {} // the publisher's own copies, pongs
                }
                c.rstart += hl + len;
            }
        }
        let role = self.conns[t].as_ref().map(|c| c.role);
        if closed {
            if role == Some(Role::Churn)
                && self.conns[t].as_ref().map(|c| c.phase) == Some(Phase::Closing)
            {
                return self.finish_cycle(t);
            }
            return self.fail(t, "server sent a close frame".into());
        }
        match role {
            Some(Role::Echo) if replies > 0 => {
                let n = replies * self.echo_frame_len;
                let batch = std::mem::take(&mut self.echo_batch);
                if let Some(c) = self.conns[t].as_mut() {
                    c.sent.extend(std::iter::repeat_n(now, replies));
                }
                // `in_flight` frames are prebuilt; longer bursts are sent in rounds.
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch.len());
                    self.send(t, &batch[..k]);
                    left -= k;
                }
                self.echo_batch = batch;
            }
            Some(Role::Churn) if replies > 0 => {
                if let Some(c) = self.conns[t].as_mut() {
                    if let Some(sent) = c.sent.pop_front() {
                        if in_window {
                            self.out.latency_us.saturating_record((now - sent) / 1000);
                        }
                    }
                    c.phase = Phase::Closing;
                }
                let close = wire::masked_frame(wire::CLOSE, &1000u16.to_be_bytes());
                self.send(t, &close);
            }
            _ => {}
        }
    }

    // ----- endings ----------------------------------------------------------

    fn finish_cycle(&mut self, t: usize) {
        if self.window(now_ns()) {
            self.out.count += 1;
            self.out.bytes += self.payload_len as u64;
        }
        self.drop_conn(t);
        self.to_open += 1; // the loop goes round again
    }

    fn fail(&mut self, t: usize, msg: String) {
        let phase = self.conns[t].as_ref().map(|c| c.phase);
        if matches!(phase, Some(Phase::Connecting) | Some(Phase::Handshake)) {
            self.connecting -= 1;
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        let stopping = self.shared.stop.load(Ordering::Relaxed);
        if !stopping {
            self.error(msg);
        }
        let churn = matches!(self.plan.scenario, Scenario::Churn);
        self.drop_conn(t);
        if churn && !stopping {
            self.to_open += 1;
        }
    }

    fn drop_conn(&mut self, t: usize) {
        if let Some(mut c) = self.conns.get_mut(t).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            if c.phase == Phase::Handshake || c.phase == Phase::Connecting {
                // counted in fail()
            }
            self.free.push(t);
        }
        if self.pub_token == Some(t) {
            self.pub_token = None;
        }
    }
}
