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
pub(crate) mod assets;
pub mod auth;
pub(crate) mod conn_state;
pub(crate) mod handler;
pub mod heartbeat;
pub(crate) mod policy;
pub mod protocol;
pub(crate) mod requests;
pub(crate) mod route;
pub(crate) mod stats;

pub(crate) use conn_state::{ConnCtl, Endpoint};
pub(crate) use handler::{ConnIo, Env};
pub(crate) use policy::{CoreHook, Policy, Rate};
pub(crate) use route::{Resource, Route};
pub(crate) use stats::{MsgStats, RTT_BUCKETS_US};
