//! ringcast: a thread-per-core io_uring WebSocket server.
//!
//! - [`ws`]: RFC 6455 as pure functions and a state machine (no sockets).
//! - [`io`]: the per-core io_uring (an idle core sleeps in it too), its
//!   provided buffers, the listener.
//! - [`shard`]: one core's connections and the loop that drives them.
//! - [`hub`]: broadcast fan-out, locally and across cores.
//! - [`app`]: the endpoints (`/echo`, `/broadcast`).
//! - [`runtime`]: executors, pinning, timers, signals.
pub mod app;
pub mod config;
pub mod hub;
pub mod io;
pub mod runtime;
pub mod shard;
pub mod ws;
