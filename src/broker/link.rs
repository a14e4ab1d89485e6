//! One connection to Redis: a non-blocking socket with a write buffer
//! (pipelined commands go out together) and a read buffer that replies are
//! parsed from in place.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use super::resp::{self, Reply};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Read buffer capacity kept after a large reply.
const KEEP: usize = 256 * 1024;

/// A connected socket and its buffers.
pub(crate) struct Link {
    sock: TcpStream,
    rbuf: Vec<u8>,
    /// Parsed up to here.
    rpos: usize,
    wbuf: Vec<u8>,
    /// Bytes received in all (for metrics).
    pub(crate) received: u64,
}

impl Link {
    /// Connects to `addr` (`HOST:PORT`) within `timeout`, with Nagle off
    /// (a command waits for nothing), then switches to non-blocking.
    pub(crate) fn connect(addr: &str, timeout: Duration) -> io::Result<Link> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        );
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(sock) => {
                    sock.set_nodelay(true)?;
                    sock.set_nonblocking(true)?;
                    return Ok(Link {
                        sock,
                        rbuf: Vec::with_capacity(READ_CHUNK),
                        rpos: 0,
                        wbuf: Vec::new(),
                        received: 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The socket, for `poll`.
    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Queues a command (sent by the next [`Link::flush`]).
    pub(crate) fn send(&mut self, args: &[&[u8]]) {
        resp::command(&mut self.wbuf, args);
    }

    /// Whether queued bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes what the socket takes.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.sock.write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// Reads what has arrived (up to `max` bytes), parsing every complete
    /// reply into `out`. An error or EOF means the connection is gone.
    pub(crate) fn read_replies(&mut self, out: &mut Vec<Reply>, max: usize) -> io::Result<usize> {
        let mut total = 0;
        while total < max {
            let len = self.rbuf.len();
            self.rbuf.resize(len + READ_CHUNK, 0);
            match self.sock.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ));
                }
                Ok(n) => {
                    self.rbuf.truncate(len + n);
                    total += n;
                    self.received += n as u64;
                    self.parse(out)?;
                    if n < READ_CHUNK {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rbuf.truncate(len);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.rbuf.truncate(len),
                Err(e) => {
                    self.rbuf.truncate(len);
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    fn parse(&mut self, out: &mut Vec<Reply>) -> io::Result<()> {
        loop {
            match resp::parse(&self.rbuf[self.rpos..]) {
                Ok(Some((r, used))) => {
                    self.rpos += used;
                    out.push(r);
                }
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            if self.rbuf.capacity() > KEEP {
                self.rbuf = Vec::with_capacity(READ_CHUNK);
            }
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        Ok(())
    }
}
