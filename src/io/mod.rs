//! Socket I/O on a per-core io_uring: the ring (where an idle core also
//! sleeps), its provided buffers, and the listener.

pub mod bufring;
pub mod listener;
pub mod ring;
