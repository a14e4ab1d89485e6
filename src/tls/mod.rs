//! TLS for every endpoint, terminated by the cores themselves: rustls's
//! unbuffered API driven by the core's ring, so TLS costs no thread, no
//! lock and no buffer on an idle connection.
//!
//! Above the per-connection building blocks (`conn`, whose buffer pool it
//! borrows from); below the shard, which feeds it received bytes and sends
//! what it encrypts.

pub(crate) mod config;
pub(crate) mod session;
pub mod stats;

pub(crate) use config::TlsFiles;
pub(crate) use session::TlsSession;
pub(crate) use stats::TlsStats;
