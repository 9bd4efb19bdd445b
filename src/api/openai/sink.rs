//! The receiving end of an OpenAI request's turn: one HTTP client, reached through a bounded
//! channel. A client that stops reading (gone, or too slow) cancels the turn, which aborts
//! the upstream call.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chat::{Rejection, TurnRequest, TurnSink, TurnStart};
use crate::protocol::{EventBody, FinishReason, TurnSnapshot};
use crate::providers::ToolCallDelta;

/// What the turn sends the HTTP side: its events, and the pieces of the tool calls the
/// client is to run (which have no room event: rooms never offer client tools).
#[derive(Debug)]
pub enum Out {
    Event(EventBody),
    Call(ToolCallDelta),
}

pub struct ClientSink {
    tenant: String,
    history: Vec<TurnSnapshot>,
    tx: mpsc::Sender<Out>,
    cancel: Mutex<Option<CancellationToken>>,
}

impl ClientSink {
    pub fn new(
        tenant: String,
        history: Vec<TurnSnapshot>,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Self {
            tenant,
            history,
            tx,
            cancel: Mutex::new(None),
        };
        (sink, rx)
    }

    fn send(&self, body: EventBody) {
        self.out(Out::Event(body));
    }

    fn out(&self, out: Out) {
        if self.tx.try_send(out).is_err() {
            let guard = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = guard.as_ref() {
                c.cancel();
            }
        }
    }
}

impl TurnSink for ClientSink {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn history(&self) -> Vec<TurnSnapshot> {
        self.history.clone()
    }
    fn begin_turn(&self, _turn: &TurnRequest, start: TurnStart<'_>) -> bool {
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(start.cancel);
        self.send(EventBody::Start {
            model: start.model.to_string(),
            chain: start.chain.to_string(),
            prompt_seq: 0,
            cached: start.cached,
        });
        true
    }
    fn delta(&self, _turn_id: Uuid, text: String) {
        self.send(EventBody::Delta { text });
    }
    fn tool_call(&self, _turn_id: Uuid, piece: ToolCallDelta) {
        self.out(Out::Call(piece));
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
    fn reject_turn(&self, _turn_id: Uuid, rejection: Rejection) {
        self.send(rejection.event());
        self.send(EventBody::End {
            finish_reason: FinishReason::Error,
            partial: false,
        });
    }
}
