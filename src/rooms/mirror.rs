//! A room's operations in cluster mode: what the shared log hands this node (`accept`,
//! `reset`), and what this node's sessions and turn runner ask of the shared room.

use std::sync::Arc;

use uuid::Uuid;

use super::room::{MemberEntry, View};
use super::shared::{Accepted, Shared, project, queue_entry};
use super::{Outbound, Prompt, Room};
use crate::chat::{Rejection, TurnOwner};
use crate::cluster::{Cancelled, Loaded, LogFrame, Submitted};
use crate::error::ErrorCode;
use crate::protocol::{EventBody, FinishReason, ServerEvent, TurnSnapshot};

impl Room {
    /// Takes one event of the shared log: delivered when it is the next seq.
    pub(super) fn accept(&self, epoch: &str, frame: &LogFrame) -> Accepted {
        let mut st = self.lock();
        if st.log.epoch() != epoch {
            return Accepted::Reset;
        }
        let head = st.log.head();
        if frame.seq <= head {
            return Accepted::Done;
        }
        if frame.seq != head + 1 {
            return Accepted::Gap;
        }
        self.deliver(&mut st, frame, 0);
        Accepted::Done
    }

    /// Records, projects and fans out one event; `hist_seq`: the history already holds the
    /// turns that ended up to it.
    fn deliver(&self, st: &mut super::room::RoomState, frame: &LogFrame, hist_seq: u64) {
        let kind = ServerEvent::static_kind(&frame.kind);
        st.log.record((frame.seq, kind, frame.frame.clone()));
        project(st, frame, hist_seq, self.cfg.history_turns);
        if kind == "message"
            && let Some(shared) = self.shared()
        {
            shared.wake_runner.notify_one();
        }
        let dropped = self.fan_out(st, frame.seq, kind, &frame.frame);
        if !dropped.is_empty()
            && let Some(shared) = self.shared()
        {
            shared.presence(dropped);
        }
    }

    /// The mirror's epoch and last seq.
    pub(super) fn mirror_position(&self) -> (String, u64) {
        let st = self.lock();
        (st.log.epoch().to_string(), st.log.head())
    }

    /// Rebuilds the mirror from a fresh load (first open, or a new epoch) and resyncs every
    /// member and viewer already here.
    pub(super) fn reset(&self, loaded: Loaded) {
        let mut st = self.lock();
        st.log = super::log::mirror(loaded.epoch, &self.cfg);
        st.history = loaded
            .history
            .iter()
            .filter_map(|h| serde_json::from_str::<TurnSnapshot>(h).ok())
            .collect();
        st.view = Some(View {
            roster: loaded
                .roster
                .iter()
                .filter_map(|m| serde_json::from_str(m).ok())
                .collect(),
            ..View::default()
        });
        for frame in &loaded.frames {
            self.deliver_quietly(&mut st, frame, loaded.hist_seq);
        }
        // Turn slots of prompts the reloaded log no longer knows (it was lost) go back.
        let known: std::collections::HashSet<Uuid> = st
            .view
            .iter()
            .flat_map(|v| {
                v.pending
                    .iter()
                    .map(|p| p.0)
                    .chain(v.active.iter().map(|a| a.turn_id))
            })
            .collect();
        st.permits.retain(|id, _| known.contains(id));
        let handles: Vec<_> = st
            .members
            .iter()
            .map(|m| m.handle.clone())
            .chain(st.viewers.iter().cloned())
            .collect();
        for handle in handles {
            if !self.catch_up(&st, &handle, None) {
                handle.slow.cancel();
            }
        }
    }

    /// Records and projects a loaded event without sending it (members get a resync).
    fn deliver_quietly(&self, st: &mut super::room::RoomState, frame: &LogFrame, hist_seq: u64) {
        let kind = ServerEvent::static_kind(&frame.kind);
        st.log.record((frame.seq, kind, frame.frame.clone()));
        project(st, frame, hist_seq, self.cfg.history_turns);
    }

    /// Queues a prompt in the shared room: its `message` event and its queue entry are
    /// written together, so a prompt is shown exactly when it is queued.
    pub(super) async fn submit_shared(
        &self,
        shared: &Shared,
        prompt: Prompt,
        owner: TurnOwner,
    ) -> Result<Uuid, ErrorCode> {
        let turn_id = Uuid::new_v4();
        let turn = prompt.turn(turn_id, owner);
        let message = self.event(
            Some(turn_id),
            EventBody::Message {
                from: prompt.from,
                text: prompt.text,
                client_msg_id: prompt.client_msg_id.clone(),
            },
        );
        let Some((head, tail)) = message.encode_around_seq() else {
            return Err(ErrorCode::Internal);
        };
        let entry = queue_entry(&turn);
        let id = turn_id.to_string();
        let submitted = shared
            .cluster
            .submit(
                &shared.keys,
                prompt.client_msg_id.as_deref(),
                (&head, &tail),
                &id,
                &entry,
            )
            .await;
        match submitted {
            Ok(Submitted::Queued(_)) => {
                let mut st = self.lock();
                st.last_activity = std::time::Instant::now();
                if let Some(permit) = turn.owner.permit {
                    st.permits.insert(turn_id, permit);
                }
                Ok(turn_id)
            }
            Ok(Submitted::Duplicate) => Err(ErrorCode::DuplicatePrompt),
            Ok(Submitted::Busy) => Err(ErrorCode::RoomBusy),
            Err(e) => {
                crate::metrics::cluster_error("submit");
                Err(ErrorCode::from(&e))
            }
        }
    }

    /// Cancels a turn wherever it is queued or running in the cluster.
    pub(super) async fn cancel_shared(
        &self,
        shared: &Shared,
        turn_id: Uuid,
    ) -> Result<(), ErrorCode> {
        let end = self.event(
            Some(turn_id),
            EventBody::End {
                finish_reason: FinishReason::Cancelled,
                partial: false,
            },
        );
        let Some((head, tail)) = end.encode_around_seq() else {
            return Err(ErrorCode::Internal);
        };
        let id = turn_id.to_string();
        match shared
            .cluster
            .cancel(&shared.keys, &id, (&head, &tail))
            .await
        {
            Ok(Cancelled::Queued | Cancelled::Running) => Ok(()),
            Ok(Cancelled::Unknown) => Err(ErrorCode::UnknownTurn),
            Err(e) => {
                crate::metrics::cluster_error("cancel");
                Err(ErrorCode::from(&e))
            }
        }
    }

    /// A cancel published for the turn this node runs.
    pub(super) fn cancel_local(&self, turn_id: &str) {
        let st = self.lock();
        if let Some(active) = &st.active
            && active.snapshot.turn_id.to_string() == turn_id
        {
            active.cancel.cancel();
        }
    }

    /// An ephemeral event from another session: to every local member but its sender.
    pub(super) fn relay_local(&self, session: &str, frame: Arc<str>) {
        let st = self.lock();
        for m in st
            .members
            .iter()
            .filter(|m| m.member.session_id.to_string() != session)
        {
            let _ = m.handle.tx.try_send(Outbound {
                seq: None,
                kind: "typing",
                text: frame.clone(),
            });
        }
    }

    pub(super) fn has_local_members(&self) -> bool {
        !self.lock().members.is_empty()
    }

    /// This node's members as (session id, member JSON), for the shared roster.
    pub(super) fn local_members(&self) -> Vec<(String, String)> {
        let st = self.lock();
        st.members
            .iter()
            .map(|m: &MemberEntry| {
                let json = serde_json::to_string(&m.member).unwrap_or_default();
                (m.member.session_id.to_string(), json)
            })
            .collect()
    }

    /// Whether prompts wait or a turn runs somewhere, as far as this node has seen.
    pub(super) fn has_pending_turns(&self) -> bool {
        self.lock()
            .view
            .as_ref()
            .is_some_and(|v| !v.pending.is_empty() || v.active.is_some())
    }

    /// The claimed turn is about to run here: `start` names its prompt's seq.
    pub(super) fn expect_turn(&self, turn_id: Uuid, message_seq: u64) {
        self.lock().queued.push_back((turn_id, message_seq));
    }

    /// Cuts short the turn this node runs.
    pub(super) fn cut_running_turn(&self) {
        let st = self.lock();
        self.cut_turn(&st);
    }

    /// Ends a turn another node (or this one, before a Redis outage) left running: its
    /// answer so far, as every node saw it, stays in the history when there is one.
    pub(super) fn end_foreign_turn(&self, turn_id: Uuid, rejection: Rejection) {
        let mut st = self.lock();
        let entry = st
            .view
            .as_ref()
            .and_then(|v| v.active.clone())
            .filter(|a| a.turn_id == turn_id && !a.answer.is_empty())
            .map(|mut a| {
                a.finish_reason = Some(FinishReason::Error);
                a.partial = true;
                a
            });
        let partial = entry.is_some();
        self.publish(&mut st, Some(turn_id), rejection.event());
        let end = EventBody::End {
            finish_reason: FinishReason::Error,
            partial,
        };
        self.publish_with(&mut st, Some(turn_id), end, entry.as_ref());
    }
}
