//! Rooms: who is in a conversation, its ordered event log, its history and its turn queue.
//!
//! A room's mutable state sits behind one short-held mutex: assigning a `seq`, appending to
//! the replay buffer and handing the frame to every member's bounded queue happen together, so
//! every member sees the same events in the same order. Turns run one at a time on a worker
//! task per room, fed by a bounded queue.

mod registry;
mod replay;
mod room;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use registry::{RoomKey, Rooms};
pub use room::{Room, encode as room_encode, now_ms as room_now_ms};

use crate::protocol::Member;

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

/// A prompt waiting for its turn.
#[derive(Debug, Clone)]
pub struct QueuedTurn {
    pub turn_id: Uuid,
    pub from: Member,
    pub prompt: String,
    pub quality: Option<crate::config::Quality>,
    /// False when the client opted out of the answer cache.
    pub use_cache: bool,
    /// The chain to use; `None`: `turn.chain` from config (rooms).
    pub chain: Option<String>,
    /// Search the tenant's documents first (rooms: yes; the OpenAI endpoint: per model).
    pub retrieval: bool,
    pub owner: TurnOwner,
}

/// Who asked: the tenant and user whose budgets the turn spends, and their concurrent-turn
/// slot, held until the turn is dropped (ended or cancelled).
#[derive(Debug, Clone)]
pub struct TurnOwner {
    pub principal: crate::auth::Principal,
    pub permit: Option<std::sync::Arc<crate::limits::Permit>>,
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
