//! The Redis engine: channels, history and presence shared by every node
//! behind a load balancer.
//!
//! A node keeps one broker thread ([`thread`]) with one subscriber and one
//! command connection to Redis, whatever its core count: every extra
//! subscribing connection would make Redis send another copy of every
//! message. The cores reach it through the mesh, as one more peer: its
//! rings carry the same engine requests the in-memory engine answers
//! ([`crate::hub::engine`]), and its answers come back the same way, so
//! the cores cannot tell the engines apart. Dependencies: `hub` (the
//! engine's messages, frames, the mesh), `conn` (frames).

pub(crate) mod engine;
pub(crate) mod link;
pub(crate) mod metrics;
pub(crate) mod resp;
pub(crate) mod scripts;
pub(crate) mod thread;
pub(crate) mod topology;
pub(crate) mod url;

pub(crate) use metrics::BrokerMetrics;
pub(crate) use url::{BrokerUrl, Kind};
