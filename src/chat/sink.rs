//! Where a turn's events go. The turn engine defines what it needs; a room implements it to
//! fan events out to its members, the OpenAI-compatible endpoint to stream them to one HTTP
//! client. chat/ knows nothing of either.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::TurnRequest;
use crate::error::ErrorCode;
use crate::protocol::{CacheInfo, EventBody, FinishReason, TurnSnapshot};
use crate::providers::ToolCallDelta;

/// The receiving end of one turn.
pub trait TurnSink: Send + Sync {
    /// Whose documents, caches and budgets the turn uses.
    fn tenant(&self) -> &str;
    /// Earlier turns of the conversation, oldest first.
    fn history(&self) -> Vec<TurnSnapshot>;
    /// Announces `start`; false when the turn was cancelled before it began (its `end` is
    /// then already sent).
    fn begin_turn(&self, turn: &TurnRequest, start: TurnStart<'_>) -> bool;
    fn delta(&self, turn_id: Uuid, text: String);
    /// Pieces that come within this long of the last delta go out together as one (zero:
    /// each at once). A room answers `rooms.coalesce_ms`.
    fn coalesce_window(&self) -> Duration {
        Duration::ZERO
    }
    /// A piece of a call of a client's tool (only turns with `tools` from the client: the
    /// OpenAI endpoint); rooms offer none, so nothing reaches them.
    fn tool_call(&self, _turn_id: Uuid, _piece: ToolCallDelta) {}
    fn turn_event(&self, turn_id: Uuid, body: EventBody);
    fn finish_turn(&self, turn_id: Uuid, finish_reason: FinishReason, partial: bool);
    /// Ends a turn that never started with `error` + `end`.
    fn reject_turn(&self, turn_id: Uuid, rejection: Rejection);
    /// Ends a turn wherever it stands (a bug cut it short) with `error` + `end`: a started
    /// one keeps its partial answer, a queued one is dropped.
    fn abort_turn(&self, turn_id: Uuid, rejection: Rejection) {
        self.reject_turn(turn_id, rejection);
    }
}

/// What `start` announces.
#[derive(Debug, Clone)]
pub struct TurnStart<'a> {
    pub model: &'a str,
    pub chain: &'a str,
    /// Set when the answer is replayed from the cache.
    pub cached: Option<CacheInfo>,
    /// Cancels the running turn (a member's `cancel`, a listener that left).
    pub cancel: CancellationToken,
}

/// Why a turn was refused before it started.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The `error` event that tells clients.
    pub fn event(&self) -> EventBody {
        EventBody::error(self.code, self.message.clone(), self.retry_after)
    }
}
