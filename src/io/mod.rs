//! Socket I/O on a per-core io_uring: the ring, its provided buffers, the
//! listener, and the bridge that lets glommio sleep until the ring has work.

pub mod bufring;
pub mod listener;
pub mod park;
pub mod ring;
