//! TLS for every endpoint, terminated by the cores themselves: rustls's
//! unbuffered API driven by the core's ring, so TLS costs no thread, no
//! lock and no buffer on an idle connection.
//!
//! Above the per-connection building blocks (`conn`, whose buffer pool it
//! borrows from); below the shard, which feeds it received bytes and sends
//! what it encrypts.

pub(crate) mod config;
pub mod ktls;
pub(crate) mod session;
pub mod stats;

pub(crate) use config::TlsFiles;
pub(crate) use ktls::KernelTls;
pub(crate) use session::TlsSession;
pub(crate) use stats::TlsStats;

/// Who does a connection's record layer.
pub(crate) enum Tls {
    /// rustls, in user space: the handshake, and everything after it
    /// unless the kernel took over.
    User(Box<TlsSession>),
    /// The kernel (kTLS): the connection's bytes are plain to the ring.
    /// Each variant is boxed on its own, so neither pays for the other
    /// (the connection holds one pointer either way).
    Kernel(Box<KernelTls>),
}

/// The user-space session in a connection's TLS slot, if rustls does its
/// records (a field-level borrow, so the connection's other fields stay
/// usable beside it).
#[inline]
pub(crate) fn user_mut(slot: &mut Option<Box<Tls>>) -> Option<&mut TlsSession> {
    match slot.as_deref_mut() {
        Some(Tls::User(s)) => Some(s),
        _ => None,
    }
}
