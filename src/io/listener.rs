//! Per-core listening sockets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a listener with `SO_REUSEPORT`, so every core can bind the same
/// address and the kernel spreads new connections over the cores' accept
/// queues by flow hash: no shared accept queue, no thundering herd.
///
/// `TCP_NODELAY` is set on the listener because accepted sockets inherit it
/// on Linux, which saves one `setsockopt` per connection.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let sock = reuseport_socket(addr)?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// Binds (without listening) a `SO_REUSEPORT` socket on `addr` with port 0
/// to choose a free port that every core can then bind. Returns the socket,
/// which must stay open until they have, and the chosen address.
pub fn reserve_port(addr: SocketAddr) -> io::Result<(OwnedFd, SocketAddr)> {
    let sock = reuseport_socket(addr)?;
    sock.bind(&addr.into())?;
    let chosen = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP address"))?;
    Ok((sock.into(), chosen))
}

/// A TCP socket for `addr`'s family with `SO_REUSEADDR` and `SO_REUSEPORT`.
fn reuseport_socket(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    Ok(sock)
}
