//! A room as the receiving end of its turns: the turn engine's events become room events
//! (one seq each, fanned out to every member), and a finished turn joins the history that
//! later turns see.

use uuid::Uuid;

use super::Room;
use super::room::ActiveTurn;
use crate::chat::{Rejection, TurnRequest, TurnSink, TurnStart};
use crate::protocol::{EventBody, FinishReason, TurnSnapshot};

impl TurnSink for Room {
    fn tenant(&self) -> &str {
        &self.key.tenant
    }

    /// Completed turns, oldest first: the context of the next turn.
    fn history(&self) -> Vec<TurnSnapshot> {
        self.lock().history.iter().cloned().collect()
    }

    /// Marks the turn as running and announces `start`. False when it was cancelled while
    /// queued (its `end` is sent here).
    fn begin_turn(&self, turn: &TurnRequest, start: TurnStart<'_>) -> bool {
        let mut st = self.lock();
        let message_seq = st
            .queued
            .iter()
            .find(|(id, _)| *id == turn.turn_id)
            .map(|(_, seq)| *seq);
        st.queued.retain(|(id, _)| *id != turn.turn_id);
        if st.cancelled.remove(&turn.turn_id) {
            let end = EventBody::End {
                finish_reason: FinishReason::Cancelled,
                partial: false,
            };
            self.publish(&mut st, Some(turn.turn_id), end);
            return false;
        }
        let prompt_seq = message_seq.unwrap_or_else(|| st.head());
        st.active = Some(ActiveTurn {
            snapshot: TurnSnapshot {
                turn_id: turn.turn_id,
                from: turn.from.clone(),
                prompt: turn.prompt.clone(),
                answer: String::new(),
                finish_reason: None,
                partial: false,
            },
            cancel: start.cancel,
        });
        let body = EventBody::Start {
            model: start.model.to_string(),
            chain: start.chain.to_string(),
            prompt_seq,
            cached: start.cached,
        };
        self.publish(&mut st, Some(turn.turn_id), body);
        true
    }

    /// Appends a piece of the answer and streams it to everyone.
    fn delta(&self, turn_id: Uuid, text: String) {
        let mut st = self.lock();
        if let Some(active) = st.active.as_mut()
            && active.snapshot.turn_id == turn_id
        {
            active.snapshot.answer.push_str(&text);
        }
        self.publish(&mut st, Some(turn_id), EventBody::Delta { text });
    }

    fn coalesce_window(&self) -> std::time::Duration {
        crate::config::ms(self.cfg.coalesce_ms)
    }

    /// Sends a turn-scoped event (`tool`, `metrics`, `error`) to everyone.
    fn turn_event(&self, turn_id: Uuid, body: EventBody) {
        let mut st = self.lock();
        self.publish(&mut st, Some(turn_id), body);
    }

    /// Ends the turn: its prompt and answer (marked partial when cut short) join the history
    /// that later turns see, and everyone gets `end`.
    fn finish_turn(&self, turn_id: Uuid, finish_reason: FinishReason, partial: bool) {
        let mut st = self.lock();
        let entry = st
            .active
            .take_if(|a| a.snapshot.turn_id == turn_id)
            .map(|active| {
                let mut snap = active.snapshot;
                snap.finish_reason = Some(finish_reason);
                snap.partial = partial;
                snap
            })
            .filter(|snap| !(snap.answer.is_empty() && finish_reason != FinishReason::Stop));
        st.last_activity = std::time::Instant::now();
        let end = EventBody::End {
            finish_reason,
            partial,
        };
        self.end_with(&mut st, turn_id, end, entry);
    }

    /// Ends a turn that never started (e.g. rejected while draining) with an error.
    fn reject_turn(&self, turn_id: Uuid, rejection: Rejection) {
        let mut st = self.lock();
        st.queued.retain(|(id, _)| *id != turn_id);
        st.cancelled.remove(&turn_id);
        self.publish(&mut st, Some(turn_id), rejection.event());
        let end = EventBody::End {
            finish_reason: FinishReason::Error,
            partial: false,
        };
        self.publish(&mut st, Some(turn_id), end);
    }

    /// Ends the turn wherever it stands: a running one keeps its partial answer in the
    /// history, a queued one is dropped; everyone gets `error` + `end`.
    fn abort_turn(&self, turn_id: Uuid, rejection: Rejection) {
        let mut st = self.lock();
        st.queued.retain(|(id, _)| *id != turn_id);
        st.cancelled.remove(&turn_id);
        let entry = st
            .active
            .take_if(|a| a.snapshot.turn_id == turn_id)
            .map(|active| {
                let mut snap = active.snapshot;
                snap.finish_reason = Some(FinishReason::Error);
                snap.partial = true;
                snap
            })
            .filter(|snap| !snap.answer.is_empty());
        let partial = entry.is_some();
        self.publish(&mut st, Some(turn_id), rejection.event());
        let end = EventBody::End {
            finish_reason: FinishReason::Error,
            partial,
        };
        self.end_with(&mut st, turn_id, end, entry);
    }
}

impl Room {
    /// Sends a turn's `end`, with the history entry it adds: a local room adds it here, the
    /// shared log adds it with the event (and every node's view adds it when it arrives).
    fn end_with(
        &self,
        st: &mut super::room::RoomState,
        turn_id: Uuid,
        end: EventBody,
        entry: Option<TurnSnapshot>,
    ) {
        if self.shared().is_none()
            && let Some(snap) = entry.clone()
        {
            st.history.push_back(snap);
            while st.history.len() > self.cfg.history_turns {
                st.history.pop_front();
            }
        }
        self.publish_with(st, Some(turn_id), end, entry.as_ref());
    }
}
