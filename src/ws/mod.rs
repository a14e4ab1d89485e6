//! RFC 6455, free of any socket type: frame codec, handshake, UTF-8 and
//! close-code validation, and the per-connection protocol state machine.
//!
//! Everything here works on byte slices, so the same code runs under the
//! io_uring driver, in unit tests and in benchmarks.

pub mod close;
pub mod deflate;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod session;
pub mod utf8;

pub use close::CloseCode;
pub use frame::OpCode;
pub use session::{Handler, Limits, MessageKind, Session, State};
