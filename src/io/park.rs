//! Sleeping in glommio's reactor until our own ring has work.
//!
//! A core's loop is a glommio task. When it has nothing to do it must let
//! glommio park the thread (so glommio's timers and cross-core channels keep
//! working) and yet be woken when our ring gets a completion. Our ring
//! signals an eventfd for that ([`super::ring::Ring::arm_wakeup`]); glommio
//! 0.9 just has no public "wait until this fd is readable".
//!
//! It does have one indirectly: `TcpStream::from_raw_fd` immediately arms a
//! `POLL_ADD` for readability on glommio's own ring, and the first `read`
//! waits for that poll before trying any syscall. So we wrap a duplicate of
//! the eventfd in a `TcpStream` and read once: the read resolves when the
//! eventfd becomes readable (with `ENOTSOCK`, since an eventfd is not a
//! socket, which is fine: readiness is all we wanted). glommio is pinned to
//! `=0.9.0` because this relies on that arming behaviour; the
//! `park_wakes_on_eventfd` test fails loudly if it ever changes.

use std::io;
use std::os::fd::{FromRawFd, RawFd};

use futures_lite::AsyncReadExt;

/// Resolves once `fd` is readable, letting glommio park the thread meanwhile.
/// Costs one `dup` and one `close` per wait, paid only when the core is idle.
pub async fn readable(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; returns a new descriptor or -1.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh descriptor; the stream owns and closes it.
    let mut stream = unsafe { glommio::net::TcpStream::from_raw_fd(dup) };
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Ok(()),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn park_wakes_on_eventfd() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async {
            // SAFETY: plain eventfd creation.
            let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            assert!(efd >= 0);
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let one = 1u64;
                // SAFETY: writing 8 bytes to an eventfd.
                unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
            });
            readable(efd).await.expect("readable");
            // Woken by the write, not by a spurious readiness: the counter
            // must hold the written value now.
            let mut v = 0u64;
            // SAFETY: reading 8 bytes from an eventfd.
            let n = unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
            assert_eq!((n, v), (8, 1));
            writer.join().unwrap();
            // SAFETY: closing our eventfd.
            unsafe { libc::close(efd) };
        });
    }
}
