//! ringcast: a thread-per-core io_uring WebSocket server.
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
pub mod app;
pub mod config;
pub mod conn;
pub mod http;
pub mod hub;
pub mod io;
pub mod runtime;
pub mod shard;
pub mod ws;
