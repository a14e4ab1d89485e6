//! HTTP/1.1 with no WebSocket knowledge: request heads, `Content-Length`
//! bodies and `100-continue`, the credentials a request carries, and
//! response writing. Pure functions over byte slices, like [`crate::ws`].

pub mod credentials;
pub mod request;
pub mod response;

pub use credentials::{Credentials, Origin};
pub use request::Method;
pub(crate) use response::refuse;
pub use response::{write_ok, write_response, Refusal, CONTINUE};
