//! Rooms: who is in a conversation, its ordered event log, its history and its turn queue.
//!
//! A room's mutable state sits behind one short-held mutex: assigning a `seq` and appending
//! to the room's log ([`RoomLog`], opened by a [`Backplane`]) and handing the frame to every
//! member's bounded queue happen together, so every member sees the same events in the same
//! order. Turns run one at a time on a worker task per room, fed by a bounded queue; a room
//! is the [`crate::chat::TurnSink`] of its turns.
//!
//! In cluster mode ([`Backend::Shared`]) the log, the history, the turn queue and the roster
//! live in Redis; a room open on a node mirrors them and fans out to the node's own members
//! (`shared.rs` for the tasks, `mirror.rs` for the room's side).

mod log;
mod mirror;
mod registry;
mod replay;
mod room;
mod shared;
#[cfg(test)]
mod tests;
mod turns;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use log::{Backplane, Frame, LocalBackplane, RoomLog, RoomMemory};
pub use registry::{Backend, RoomKey, Rooms};
pub use room::{Prompt, Refusal, Resume, Room};

/// One frame for a session's writer; `seq` is set for room events so the writer knows where a
/// disconnected client should resume.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub seq: Option<u64>,
    /// The event type, for the events-sent metric.
    pub kind: &'static str,
    pub text: Arc<str>,
}

/// How a room reaches one member's session.
#[derive(Debug, Clone)]
pub struct MemberHandle {
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled by the room when the member's queue overflows; the session then closes with
    /// "slow consumer" and the seq to resume from.
    pub slow: CancellationToken,
}

/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 128;

/// Why a room or member name is refused, if it is.
pub fn check_label(field: &str, value: &str, max: usize) -> Option<String> {
    if value.is_empty() {
        return Some(format!("`{field}` must not be empty"));
    }
    if value.chars().count() > max {
        return Some(format!("`{field}` is longer than {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Some(format!("`{field}` must not contain control characters"));
    }
    None
}
