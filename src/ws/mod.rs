//! The WebSocket edge: upgrade, one session task per connection, protocol v1 frames in and out.

mod rate;
mod session;
mod writer;

pub use session::{Caller, serve_session};
