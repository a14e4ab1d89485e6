//! ringcast: a thread-per-core io_uring WebSocket server.
//!
//! It runs as the `ringcast` binary, or inside any program through
//! [`Server`]: started from a [`Config`] on its own pinned cores, published
//! into from any thread through a [`Publisher`], stopped with close frames
//! by [`Server::shutdown`] (`examples/embed.rs` is a complete program).
//!
//! ```no_run
//! let cfg = ringcast::Config {
//!     listen: "127.0.0.1:0".parse().expect("address"),
//!     ..ringcast::Config::default()
//! };
//! let server = ringcast::Server::start(&cfg).expect("start");
//! println!("clients connect to ws://{}/ws", server.local_addr());
//! let publisher = server.publisher(); // Send + Clone: one per thread
//! std::thread::spawn(move || publisher.publish("ticks", r#"{"tick":1}"#))
//!     .join()
//!     .expect("thread")
//!     .expect("published");
//! let per_core = server.shutdown().expect("clean shutdown");
//! println!("{} cores stopped", per_core.len());
//! ```
//!
//! Layers, ground first; each imports only from the layers above it in
//! this list, never from one below (see `docs/architecture.md`):
//!
//! - [`ws`]: RFC 6455 as pure functions and a state machine (no sockets).
//! - [`io`]: the per-core io_uring (it owns its provided buffers; an idle
//!   core sleeps in it too), the listener.
//! - [`conn`]: a connection's identity, frames encoded once and shared,
//!   the bounded out-queue.
//! - [`hub`]: fan-out over keys and out-queues through one delivery loop,
//!   locally and across cores.
//! - [`app`]: what messages mean: routes, per-endpoint state, the message
//!   handler, the `/ws` protocol, the publish API, auth, heartbeats.
//! - [`shard`]: one core's connections and the loop that drives them.
//! - [`runtime`]: executors, pinning, start and stop, signals.
//!
//! The public API is the protocol layers ([`ws`], [`http`]), the ring
//! ([`io`], which the load generator drives too), [`Config`], [`Server`],
//! [`Publisher`] and [`run`].
//! Everything else is `pub(crate)`; [`internals`] names the few building
//! blocks benches, fuzz targets and the load generator need.
pub(crate) mod app;
pub(crate) mod broker;
pub mod config;
pub(crate) mod conn;
pub mod http;
pub(crate) mod hub;
pub mod io;
pub(crate) mod runtime;
pub(crate) mod shard;
pub mod tls;
pub mod ws;

pub use app::stats::MsgStats;
pub use config::Config;
pub use runtime::publisher::{PublishError, Publisher};
pub use runtime::run;
pub use runtime::server::{Server, ShutdownHandle};
pub use shard::stats::Stats;

/// Building blocks exposed for the benches, the fuzz targets and the load
/// generator (they drive the handler, fan-out and parsers directly). Not a
/// stable API: the layers behind them may change shape at any time.
#[doc(hidden)]
pub mod internals {
    pub use crate::app::conn_state::ConnCtl;
    pub use crate::app::handler::{ConnIo, Env};
    pub use crate::app::policy::Policy;
    pub use crate::app::route::{Resource, Route};
    pub use crate::app::{api, auth, heartbeat, protocol};
    pub use crate::conn::frame::{Frame, SharedFrame};
    pub use crate::conn::key::ConnKey;
    pub use crate::conn::outq::{BufPool, OutQueue, Pushed, MAX_IOV};
    pub use crate::hub::broadcast::Hub;
    pub use crate::hub::deliver::Recipients;
    pub use crate::hub::wire::{message_frame, payload_of};
    pub use crate::runtime::limits::raise_nofile;
}
