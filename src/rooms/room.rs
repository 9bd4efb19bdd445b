//! One room's state and the operations sessions and the turn engine perform on it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::replay::ReplayBuffer;
use super::{MemberHandle, Outbound, QueuedTurn, RoomKey, TurnOwner};
use crate::config::RoomsConfig;
use crate::error::ErrorCode;
use crate::protocol::{EventBody, FinishReason, Member, RoomSnapshot, ServerEvent, TurnSnapshot};

/// Remembered `client_msg_id`s per room, for idempotent prompts.
const RECENT_IDS: usize = 512;
/// Typing notices from one member are relayed at most this often.
const TYPING_INTERVAL: Duration = Duration::from_millis(500);

/// A conversation shared by its members.
pub struct Room {
    pub key: RoomKey,
    cfg: Arc<RoomsConfig>,
    state: Mutex<RoomState>,
    turns_tx: mpsc::Sender<QueuedTurn>,
}

struct MemberEntry {
    member: Member,
    handle: MemberHandle,
    last_typing: Option<Instant>,
}

struct ActiveTurn {
    snapshot: TurnSnapshot,
    cancel: CancellationToken,
}

struct RoomState {
    seq: u64,
    replay: ReplayBuffer,
    members: Vec<MemberEntry>,
    /// Read-only followers (SSE): every room event, no presence.
    viewers: Vec<MemberHandle>,
    history: VecDeque<TurnSnapshot>,
    active: Option<ActiveTurn>,
    /// Queued turns with the seq of the `message` event that announced them.
    queued: VecDeque<(Uuid, u64)>,
    cancelled: HashSet<Uuid>,
    recent_ids: VecDeque<String>,
    last_activity: Instant,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Serialises a server event once; every member gets the same bytes.
pub fn encode(event: &ServerEvent) -> Arc<str> {
    match serde_json::to_string(event) {
        Ok(s) => Arc::from(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise server event");
            Arc::from(
                "{\"type\":\"error\",\"code\":\"internal\",\"message\":\"encoding failed\",\"retryable\":false,\"ts\":0}",
            )
        }
    }
}

impl Room {
    pub(super) fn new(
        key: RoomKey,
        cfg: Arc<RoomsConfig>,
        turns_tx: mpsc::Sender<QueuedTurn>,
    ) -> Self {
        let replay = ReplayBuffer::new(cfg.replay_events, cfg.replay_bytes);
        Self {
            key,
            cfg,
            state: Mutex::new(RoomState {
                seq: 0,
                replay,
                members: Vec::new(),
                viewers: Vec::new(),
                history: VecDeque::new(),
                active: None,
                queued: VecDeque::new(),
                cancelled: HashSet::new(),
                recent_ids: VecDeque::new(),
                last_activity: Instant::now(),
            }),
            turns_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the room, so recover the guard instead of propagating.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a member. With `last_seq` the missed events are replayed from the buffer; without
    /// it, or when the buffer no longer holds them, the member gets a `resync` snapshot.
    pub fn join(
        &self,
        member: Member,
        handle: MemberHandle,
        last_seq: Option<u64>,
    ) -> Result<(), ErrorCode> {
        let mut st = self.lock();
        if st.members.len() >= self.cfg.max_members {
            return Err(ErrorCode::RoomFull);
        }
        st.last_activity = Instant::now();
        let delivered = self.catch_up(&st, &handle, last_seq);
        if !delivered {
            handle.slow.cancel();
            return Ok(());
        }
        st.members.push(MemberEntry {
            member,
            handle,
            last_typing: None,
        });
        self.publish_presence(&mut st);
        Ok(())
    }

    /// Adds a read-only viewer (the SSE endpoint): it gets every room event, with the same
    /// catch-up as a member, but is not a member (no presence, cannot prompt).
    pub fn watch(&self, handle: MemberHandle, last_seq: Option<u64>) -> Result<(), ErrorCode> {
        let mut st = self.lock();
        // Viewers that went away are otherwise noticed only at the next event.
        st.viewers.retain(|v| !v.tx.is_closed());
        if st.members.len() + st.viewers.len() >= self.cfg.max_members {
            return Err(ErrorCode::RoomFull);
        }
        if self.catch_up(&st, &handle, last_seq) {
            st.viewers.push(handle);
        } else {
            handle.slow.cancel();
        }
        Ok(())
    }

    /// Sends a newcomer what it missed: the events after `last_seq` from the replay buffer,
    /// or a `resync` snapshot when the buffer no longer holds them. False if its queue is
    /// already full.
    fn catch_up(&self, st: &RoomState, handle: &MemberHandle, last_seq: Option<u64>) -> bool {
        let replay = last_seq.and_then(|n| st.replay.since(n, st.seq));
        match replay {
            Some(frames) if frames.len() < handle.tx.max_capacity() => {
                if last_seq.is_some() {
                    crate::metrics::ws_resume(true);
                }
                frames.into_iter().all(|(seq, kind, text)| {
                    handle
                        .tx
                        .try_send(Outbound {
                            seq: Some(seq),
                            kind,
                            text,
                        })
                        .is_ok()
                })
            }
            _ => {
                if last_seq.is_some() {
                    crate::metrics::ws_resume(false);
                }
                let ev = ServerEvent {
                    room: Some(self.key.name.clone()),
                    seq: Some(st.seq),
                    ts: now_ms(),
                    turn_id: None,
                    body: EventBody::Resync {
                        snapshot: snapshot(st),
                    },
                };
                handle
                    .tx
                    .try_send(Outbound {
                        seq: Some(st.seq),
                        kind: "resync",
                        text: encode(&ev),
                    })
                    .is_ok()
            }
        }
    }

    /// Removes a member (no-op if absent) and tells the others.
    pub fn leave(&self, session_id: Uuid) {
        let mut st = self.lock();
        let before = st.members.len();
        st.members.retain(|m| m.member.session_id != session_id);
        if st.members.len() != before {
            st.last_activity = Instant::now();
            self.publish_presence(&mut st);
        }
    }

    /// Relays a typing notice to the other members; ephemeral and rate-limited.
    pub fn typing(&self, session_id: Uuid, active: bool) {
        let mut st = self.lock();
        let now = Instant::now();
        let Some(entry) = st
            .members
            .iter_mut()
            .find(|m| m.member.session_id == session_id)
        else {
            return;
        };
        if active
            && entry
                .last_typing
                .is_some_and(|t| now.duration_since(t) < TYPING_INTERVAL)
        {
            return;
        }
        entry.last_typing = if active { Some(now) } else { None };
        let ev = ServerEvent {
            room: Some(self.key.name.clone()),
            seq: None,
            ts: now_ms(),
            turn_id: None,
            body: EventBody::Typing {
                member: entry.member.clone(),
                active,
            },
        };
        let text = encode(&ev);
        for m in st
            .members
            .iter()
            .filter(|m| m.member.session_id != session_id)
        {
            // Typing is best effort: a full queue just misses it.
            let _ = m.handle.tx.try_send(Outbound {
                seq: None,
                kind: "typing",
                text: text.clone(),
            });
        }
    }

    /// Queues a prompt as a new turn and shows it to everyone. Errors: duplicate
    /// `client_msg_id` (with the original turn unknown), or a full queue.
    pub fn submit_prompt(
        &self,
        from: Member,
        text: String,
        client_msg_id: Option<String>,
        quality: Option<crate::config::Quality>,
        use_cache: bool,
        owner: TurnOwner,
    ) -> Result<Uuid, ErrorCode> {
        let mut st = self.lock();
        if let Some(id) = &client_msg_id
            && st.recent_ids.iter().any(|r| r == id)
        {
            return Err(ErrorCode::DuplicatePrompt);
        }
        let turn_id = Uuid::new_v4();
        let queued = QueuedTurn {
            turn_id,
            from: from.clone(),
            prompt: text.clone(),
            quality,
            use_cache,
            chain: None,
            retrieval: true,
            owner,
        };
        match self.turns_tx.try_send(queued) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ErrorCode::RoomBusy),
            Err(TrySendError::Closed(_)) => return Err(ErrorCode::ShuttingDown),
        }
        if let Some(id) = &client_msg_id {
            if st.recent_ids.len() >= RECENT_IDS {
                st.recent_ids.pop_front();
            }
            st.recent_ids.push_back(id.clone());
        }
        st.last_activity = Instant::now();
        let message_seq = self.publish(
            &mut st,
            Some(turn_id),
            EventBody::Message {
                from,
                text,
                client_msg_id,
            },
        );
        st.queued.push_back((turn_id, message_seq));
        Ok(turn_id)
    }

    /// Cancels the running turn (its upstream request is aborted) or a queued one.
    pub fn cancel(&self, turn_id: Uuid) -> Result<(), ErrorCode> {
        let mut st = self.lock();
        if let Some(active) = &st.active
            && active.snapshot.turn_id == turn_id
        {
            active.cancel.cancel();
            return Ok(());
        }
        if st.queued.iter().any(|(id, _)| *id == turn_id) {
            st.cancelled.insert(turn_id);
            return Ok(());
        }
        Err(ErrorCode::UnknownTurn)
    }

    /// Completed turns, oldest first: the context of the next turn.
    pub fn history(&self) -> Vec<TurnSnapshot> {
        self.lock().history.iter().cloned().collect()
    }

    /// Marks the turn as running and announces `start`. False when it was cancelled while
    /// queued (its `end` is sent here).
    pub fn begin_turn(
        &self,
        turn: &QueuedTurn,
        model: &str,
        chain: &str,
        cached: Option<crate::protocol::CacheInfo>,
        cancel: CancellationToken,
    ) -> bool {
        let mut st = self.lock();
        let message_seq = st
            .queued
            .iter()
            .find(|(id, _)| *id == turn.turn_id)
            .map(|(_, seq)| *seq);
        st.queued.retain(|(id, _)| *id != turn.turn_id);
        if st.cancelled.remove(&turn.turn_id) {
            self.publish(
                &mut st,
                Some(turn.turn_id),
                EventBody::End {
                    finish_reason: FinishReason::Cancelled,
                    partial: false,
                },
            );
            return false;
        }
        let prompt_seq = message_seq.unwrap_or(st.seq);
        st.active = Some(ActiveTurn {
            snapshot: TurnSnapshot {
                turn_id: turn.turn_id,
                from: turn.from.clone(),
                prompt: turn.prompt.clone(),
                answer: String::new(),
                finish_reason: None,
                partial: false,
            },
            cancel,
        });
        self.publish(
            &mut st,
            Some(turn.turn_id),
            EventBody::Start {
                model: model.to_string(),
                chain: chain.to_string(),
                prompt_seq,
                cached,
            },
        );
        true
    }

    /// Appends a piece of the answer and streams it to everyone.
    pub fn delta(&self, turn_id: Uuid, text: String) {
        let mut st = self.lock();
        if let Some(active) = st.active.as_mut()
            && active.snapshot.turn_id == turn_id
        {
            active.snapshot.answer.push_str(&text);
        }
        self.publish(&mut st, Some(turn_id), EventBody::Delta { text });
    }

    /// Sends a turn-scoped event (`tool`, `metrics`, `error`) to everyone.
    pub fn turn_event(&self, turn_id: Uuid, body: EventBody) {
        let mut st = self.lock();
        self.publish(&mut st, Some(turn_id), body);
    }

    /// Ends the turn: its prompt and answer (marked partial when cut short) join the history
    /// that later turns see, and everyone gets `end`.
    pub fn finish_turn(&self, turn_id: Uuid, finish_reason: FinishReason, partial: bool) {
        let mut st = self.lock();
        if let Some(active) = st.active.take_if(|a| a.snapshot.turn_id == turn_id) {
            let mut snap = active.snapshot;
            snap.finish_reason = Some(finish_reason);
            snap.partial = partial;
            if !(snap.answer.is_empty() && finish_reason != FinishReason::Stop) {
                st.history.push_back(snap);
            }
            while st.history.len() > self.cfg.history_turns {
                st.history.pop_front();
            }
        }
        st.last_activity = Instant::now();
        self.publish(
            &mut st,
            Some(turn_id),
            EventBody::End {
                finish_reason,
                partial,
            },
        );
    }

    /// Ends a turn that never started (e.g. rejected while draining) with an error.
    pub fn reject_turn(
        &self,
        turn_id: Uuid,
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    ) {
        let mut st = self.lock();
        st.queued.retain(|(id, _)| *id != turn_id);
        st.cancelled.remove(&turn_id);
        self.publish(
            &mut st,
            Some(turn_id),
            EventBody::error(code, message, retry_after),
        );
        self.publish(
            &mut st,
            Some(turn_id),
            EventBody::End {
                finish_reason: FinishReason::Error,
                partial: false,
            },
        );
    }

    /// True when nobody is in the room, nothing runs, and it has been quiet for `ttl`.
    pub fn is_idle(&self, ttl: Duration) -> bool {
        let st = self.lock();
        st.members.is_empty()
            && st.viewers.iter().all(|v| v.tx.is_closed())
            && st.active.is_none()
            && st.queued.is_empty()
            && st.last_activity.elapsed() >= ttl
    }

    fn publish_presence(&self, st: &mut RoomState) {
        let members = st.members.iter().map(|m| m.member.clone()).collect();
        self.publish(st, None, EventBody::Presence { members });
    }

    /// Assigns the next seq, records the frame for replay and hands it to every member.
    /// Members whose queue is full are dropped as slow consumers (their session closes with
    /// the seq to resume from) and the others are told who left.
    fn publish(&self, st: &mut RoomState, turn_id: Option<Uuid>, body: EventBody) -> u64 {
        st.seq += 1;
        let seq = st.seq;
        let kind = body.kind();
        let ev = ServerEvent {
            room: Some(self.key.name.clone()),
            seq: Some(seq),
            ts: now_ms(),
            turn_id,
            body,
        };
        let text = encode(&ev);
        st.replay.push(seq, kind, text.clone());
        let mut dropped = false;
        st.members.retain(|m| {
            match m.handle.tx.try_send(Outbound {
                seq: Some(seq),
                kind,
                text: text.clone(),
            }) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(room = %self.key.name, session = %m.member.session_id, "slow consumer dropped");
                    m.handle.slow.cancel();
                    crate::metrics::ws_slow_consumer();
                    dropped = true;
                    false
                }
                Err(TrySendError::Closed(_)) => {
                    dropped = true;
                    false
                }
            }
        });
        st.viewers.retain(|v| {
            match v.tx.try_send(Outbound {
                seq: Some(seq),
                kind,
                text: text.clone(),
            }) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    v.slow.cancel();
                    crate::metrics::ws_slow_consumer();
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        if dropped {
            self.publish_presence(st);
        }
        seq
    }
}

fn snapshot(st: &RoomState) -> RoomSnapshot {
    RoomSnapshot {
        members: st.members.iter().map(|m| m.member.clone()).collect(),
        turns: st.history.iter().cloned().collect(),
        active: st.active.as_ref().map(|a| a.snapshot.clone()),
    }
}
