//! Where a turn's events go. A room fans them out to its members; the OpenAI-compatible
//! endpoint streams them to one HTTP client. The turn engine only sees this trait.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::protocol::{CacheInfo, EventBody, FinishReason, TurnSnapshot};
use crate::rooms::{QueuedTurn, Room};

/// The receiving end of one turn.
pub trait TurnSink: Send + Sync {
    /// Whose documents, caches and budgets the turn uses.
    fn tenant(&self) -> &str;
    /// Earlier turns of the conversation, oldest first.
    fn history(&self) -> Vec<TurnSnapshot>;
    /// Announces `start`; false when the turn was cancelled before it began (its `end` is
    /// then already sent).
    fn begin_turn(
        &self,
        turn: &QueuedTurn,
        model: &str,
        chain: &str,
        cached: Option<CacheInfo>,
        cancel: CancellationToken,
    ) -> bool;
    fn delta(&self, turn_id: Uuid, text: String);
    fn turn_event(&self, turn_id: Uuid, body: EventBody);
    fn finish_turn(&self, turn_id: Uuid, finish_reason: FinishReason, partial: bool);
    fn reject_turn(
        &self,
        turn_id: Uuid,
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    );
}

impl TurnSink for Room {
    fn tenant(&self) -> &str {
        &self.key.tenant
    }
    fn history(&self) -> Vec<TurnSnapshot> {
        Room::history(self)
    }
    fn begin_turn(
        &self,
        turn: &QueuedTurn,
        model: &str,
        chain: &str,
        cached: Option<CacheInfo>,
        cancel: CancellationToken,
    ) -> bool {
        Room::begin_turn(self, turn, model, chain, cached, cancel)
    }
    fn delta(&self, turn_id: Uuid, text: String) {
        Room::delta(self, turn_id, text)
    }
    fn turn_event(&self, turn_id: Uuid, body: EventBody) {
        Room::turn_event(self, turn_id, body)
    }
    fn finish_turn(&self, turn_id: Uuid, finish_reason: FinishReason, partial: bool) {
        Room::finish_turn(self, turn_id, finish_reason, partial)
    }
    fn reject_turn(
        &self,
        turn_id: Uuid,
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    ) {
        Room::reject_turn(self, turn_id, code, message, retry_after)
    }
}

/// A turn with one listener (an HTTP request): events go into a bounded channel. A listener
/// that stops reading (gone, or too slow) cancels the turn, which aborts the upstream call.
pub struct ChannelSink {
    tenant: String,
    history: Vec<TurnSnapshot>,
    tx: tokio::sync::mpsc::Sender<EventBody>,
    cancel: std::sync::Mutex<Option<CancellationToken>>,
}

impl ChannelSink {
    pub fn new(
        tenant: String,
        history: Vec<TurnSnapshot>,
        capacity: usize,
    ) -> (Self, tokio::sync::mpsc::Receiver<EventBody>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let sink = Self {
            tenant,
            history,
            tx,
            cancel: std::sync::Mutex::new(None),
        };
        (sink, rx)
    }

    fn send(&self, body: EventBody) {
        if self.tx.try_send(body).is_err() {
            let guard = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref() {
                c.cancel();
            }
        }
    }
}

impl TurnSink for ChannelSink {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn history(&self) -> Vec<TurnSnapshot> {
        self.history.clone()
    }
    fn begin_turn(
        &self,
        _turn: &QueuedTurn,
        model: &str,
        chain: &str,
        cached: Option<CacheInfo>,
        cancel: CancellationToken,
    ) -> bool {
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(cancel);
        self.send(EventBody::Start {
            model: model.to_string(),
            chain: chain.to_string(),
            prompt_seq: 0,
            cached,
        });
        true
    }
    fn delta(&self, _turn_id: Uuid, text: String) {
        self.send(EventBody::Delta { text });
    }
    fn turn_event(&self, _turn_id: Uuid, body: EventBody) {
        self.send(body);
    }
    fn finish_turn(&self, _turn_id: Uuid, finish_reason: FinishReason, partial: bool) {
        self.send(EventBody::End {
            finish_reason,
            partial,
        });
    }
    fn reject_turn(
        &self,
        _turn_id: Uuid,
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    ) {
        self.send(EventBody::error(code, message, retry_after));
        self.send(EventBody::End {
            finish_reason: FinishReason::Error,
            partial: false,
        });
    }
}
