//! Per-connection building blocks that know nothing of sockets or
//! endpoints: a connection's identity, frames encoded once and shared by
//! reference, and the bounded out-queue a connection's bytes wait in.
//!
//! Above the protocol (`ws`) and the ring (`io`); below fan-out (`hub`),
//! which only ever sees [`ConnKey`]s and [`OutQueue`]s.

pub(crate) mod frame;
pub(crate) mod key;
pub(crate) mod outq;

pub(crate) use frame::{Frame, FrameCache, SharedFrame};
pub(crate) use key::ConnKey;
pub(crate) use outq::{BufPool, OutQueue};
