//! What messages mean once the protocol layer has them: the routes and
//! resources, each endpoint's per-connection state, the message handler,
//! the `/ws` protocol, the publish API, authentication and the heartbeat
//! policy.
//!
//! Kept apart from the parser and the I/O loop (as uWebSockets keeps its App
//! apart from its parser), and an enum rather than trait objects: the hot
//! path is a `match`, not an indirect call. Above `hub` (it queues frames
//! for fan-out) and below `shard` (the loop that calls it).

pub mod api;
pub mod auth;
pub mod conn_state;
pub mod handler;
pub mod heartbeat;
pub mod policy;
pub mod protocol;
pub mod requests;
pub mod route;
pub mod stats;

pub use conn_state::{ConnCtl, Endpoint, WsConn};
pub use handler::{ConnIo, Env};
pub use policy::{CoreHook, Policy, PONG_BURST};
pub use route::{Resource, Route};
pub use stats::{MsgStats, RTT_BUCKETS_US};
