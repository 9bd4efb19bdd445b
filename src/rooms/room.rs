//! One room's state and the operations sessions and the turn engine perform on it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log::{Retired, RoomLog, RoomMemory};
use super::shared::Shared;
use super::{MemberHandle, Outbound, RoomKey};
use crate::chat::{TurnOwner, TurnRequest};
use crate::config::RoomsConfig;
use crate::error::ErrorCode;
use crate::protocol::{EventBody, Member, RoomSnapshot, ServerEvent, TurnSnapshot, unix_ms};

/// Remembered `client_msg_id`s per room, for idempotent prompts.
const RECENT_IDS: usize = 512;
/// Typing notices from one member are relayed at most this often.
const TYPING_INTERVAL: Duration = Duration::from_millis(500);

/// A conversation shared by its members.
pub struct Room {
    pub key: RoomKey,
    pub(super) cfg: Arc<RoomsConfig>,
    state: Mutex<RoomState>,
    pub(super) mode: Mode,
}

/// Where the room's turns queue and its events go.
pub(super) enum Mode {
    /// In this process: a local queue and worker; events fan out at once.
    Local(mpsc::Sender<TurnRequest>),
    /// Cluster mode: the queue and the log are shared; events fan out when they come back.
    Shared(Arc<Shared>),
}

/// Cluster mode: what this node has seen of the room, built from its events as they arrive
/// (every node builds the same): the roster of all nodes, prompts waiting, the running turn.
#[derive(Default)]
pub(super) struct View {
    pub roster: Vec<Member>,
    pub pending: VecDeque<(Uuid, Member, String)>,
    pub active: Option<TurnSnapshot>,
}

pub(super) struct MemberEntry {
    pub member: Member,
    pub handle: MemberHandle,
    last_typing: Option<Instant>,
}

pub(super) struct ActiveTurn {
    pub snapshot: TurnSnapshot,
    pub cancel: CancellationToken,
}

impl RoomState {
    /// The seq of the last room event.
    pub fn head(&self) -> u64 {
        self.log.head()
    }

    /// Members of the room: this node's, or in cluster mode every node's (as the last
    /// roster said).
    fn member_count(&self) -> usize {
        let roster = self.view.as_ref().map_or(0, |v| v.roster.len());
        self.members.len().max(roster)
    }
}

pub(super) struct RoomState {
    /// Assigns seqs and keeps the tail for replay.
    pub log: Box<dyn RoomLog>,
    pub members: Vec<MemberEntry>,
    /// Read-only followers (SSE): every room event, no presence.
    pub viewers: Vec<MemberHandle>,
    pub history: VecDeque<TurnSnapshot>,
    pub active: Option<ActiveTurn>,
    /// Queued turns with the seq of the `message` event that announced them.
    pub queued: VecDeque<(Uuid, u64)>,
    pub cancelled: HashSet<Uuid>,
    recent_ids: VecDeque<String>,
    /// Cluster mode: the view of the shared room (`None` in local mode).
    pub view: Option<View>,
    /// Cluster mode: turn slots of prompts sent from this node, held until their `end`
    /// arrives, whichever node runs them.
    pub permits: HashMap<Uuid, Arc<crate::limits::Permit>>,
    pub last_activity: Instant,
    /// Gave its slot back: its memory is parked, nobody can join it any more.
    retired: bool,
}

/// Why a join or watch did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The room gave its slot back in the meantime: open it again.
    Retired,
    Code(ErrorCode),
}

/// Where a returning client was: its last seq, in the epoch it saw it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub last_seq: u64,
    /// `None`: the client does not know (it resyncs).
    pub epoch: Option<String>,
}

/// A prompt as a member sent it.
pub struct Prompt {
    pub from: Member,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub quality: Option<crate::config::Quality>,
    pub use_cache: bool,
    /// The trace context of the sender's connection.
    pub trace: Option<crate::telemetry::TraceParent>,
}

impl Prompt {
    /// The room turn that answers it: the room's chain, with retrieval.
    pub(super) fn turn(&self, turn_id: Uuid, owner: TurnOwner) -> TurnRequest {
        TurnRequest {
            turn_id,
            from: self.from.clone(),
            prompt: self.text.clone(),
            quality: self.quality,
            use_cache: self.use_cache,
            chain: None,
            retrieval: true,
            client_history: false,
            sampling: Default::default(),
            client_system: Vec::new(),
            tools: Default::default(),
            conversation: None,
            server_tools: true,
            trace: self.trace.clone(),
            owner,
        }
    }
}

impl Room {
    pub(super) fn new(key: RoomKey, cfg: Arc<RoomsConfig>, mode: Mode, memory: RoomMemory) -> Self {
        let view = matches!(mode, Mode::Shared(_)).then(View::default);
        Self {
            key,
            cfg,
            state: Mutex::new(RoomState {
                log: memory.log,
                members: Vec::new(),
                viewers: Vec::new(),
                history: memory.history,
                active: None,
                queued: VecDeque::new(),
                cancelled: HashSet::new(),
                recent_ids: VecDeque::new(),
                view,
                permits: HashMap::new(),
                last_activity: Instant::now(),
                retired: false,
            }),
            mode,
        }
    }

    /// An event of this room, not yet numbered.
    pub(super) fn event(&self, turn_id: Option<Uuid>, body: EventBody) -> ServerEvent {
        ServerEvent {
            room: Some(self.key.name.clone()),
            seq: None,
            ts: unix_ms(),
            turn_id,
            body,
        }
    }

    /// The cluster side, in cluster mode.
    pub(super) fn shared(&self) -> Option<&Arc<Shared>> {
        match &self.mode {
            Mode::Shared(s) => Some(s),
            Mode::Local(_) => None,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RoomState> {
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
        resume: Option<&Resume>,
    ) -> Result<(), Refusal> {
        let mut st = self.lock();
        if st.retired {
            return Err(Refusal::Retired);
        }
        if st.member_count() >= self.cfg.max_members {
            return Err(Refusal::Code(ErrorCode::RoomFull));
        }
        st.last_activity = Instant::now();
        let delivered = self.catch_up(&st, &handle, resume);
        if !delivered {
            handle.slow.cancel();
            return Ok(());
        }
        st.members.push(MemberEntry {
            member,
            handle,
            last_typing: None,
        });
        self.members_changed(&mut st, Vec::new());
        Ok(())
    }

    /// Adds a read-only viewer (the SSE endpoint): it gets every room event, with the same
    /// catch-up as a member, but is not a member (no presence, cannot prompt).
    pub fn watch(&self, handle: MemberHandle, resume: Option<&Resume>) -> Result<(), Refusal> {
        let mut st = self.lock();
        if st.retired {
            return Err(Refusal::Retired);
        }
        // Viewers that went away are otherwise noticed only at the next event.
        st.viewers.retain(|v| !v.tx.is_closed());
        if st.member_count() + st.viewers.len() >= self.cfg.max_members {
            return Err(Refusal::Code(ErrorCode::RoomFull));
        }
        if self.catch_up(&st, &handle, resume) {
            st.viewers.push(handle);
        } else {
            handle.slow.cancel();
        }
        Ok(())
    }

    /// Sends a newcomer what it missed: the events after its `last_seq` from the log, when
    /// that seq is of the log's epoch and the log still holds them; else a `resync` snapshot.
    /// False if its queue is already full.
    pub(super) fn catch_up(
        &self,
        st: &RoomState,
        handle: &MemberHandle,
        resume: Option<&Resume>,
    ) -> bool {
        let last_seq = resume.map(|r| r.last_seq);
        let replay = resume
            .filter(|r| r.epoch.as_deref() == Some(st.log.epoch()))
            .and_then(|r| st.log.since(r.last_seq));
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
                let head = st.log.head();
                let ev = ServerEvent {
                    room: Some(self.key.name.clone()),
                    seq: Some(head),
                    ts: unix_ms(),
                    turn_id: None,
                    body: EventBody::Resync {
                        snapshot: snapshot(st),
                    },
                };
                handle
                    .tx
                    .try_send(Outbound {
                        seq: Some(head),
                        kind: "resync",
                        text: ev.encode(),
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
            self.members_changed(&mut st, vec![session_id.to_string()]);
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
        let body = EventBody::Typing {
            member: entry.member.clone(),
            active,
        };
        let ev = self.event(None, body);
        let text = ev.encode();
        if let Some(shared) = self.shared() {
            return shared.relay(session_id, &text);
        }
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
    pub async fn submit_prompt(&self, prompt: Prompt, owner: TurnOwner) -> Result<Uuid, ErrorCode> {
        let turns_tx = match &self.mode {
            Mode::Local(tx) => tx,
            // Boxed so that a session's task does not carry cluster mode's future size.
            Mode::Shared(shared) => {
                return Box::pin(self.submit_shared(shared, prompt, owner)).await;
            }
        };
        let mut st = self.lock();
        if let Some(id) = &prompt.client_msg_id
            && st.recent_ids.iter().any(|r| r == id)
        {
            return Err(ErrorCode::DuplicatePrompt);
        }
        let turn_id = Uuid::new_v4();
        match turns_tx.try_send(prompt.turn(turn_id, owner)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ErrorCode::RoomBusy),
            Err(TrySendError::Closed(_)) => return Err(ErrorCode::ShuttingDown),
        }
        if let Some(id) = &prompt.client_msg_id {
            if st.recent_ids.len() >= RECENT_IDS {
                st.recent_ids.pop_front();
            }
            st.recent_ids.push_back(id.clone());
        }
        st.last_activity = Instant::now();
        let message = EventBody::Message {
            from: prompt.from,
            text: prompt.text,
            client_msg_id: prompt.client_msg_id,
        };
        let message_seq = self.publish(&mut st, Some(turn_id), message);
        st.queued.push_back((turn_id, message_seq));
        Ok(turn_id)
    }

    /// Cancels the running turn (its upstream request is aborted) or a queued one.
    pub async fn cancel(&self, turn_id: Uuid) -> Result<(), ErrorCode> {
        if let Some(shared) = self.shared() {
            return Box::pin(self.cancel_shared(shared, turn_id)).await;
        }
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

    /// True when nobody is in the room, nothing runs, and it has been quiet for `ttl`.
    pub fn is_idle(&self, ttl: Duration) -> bool {
        idle(&self.lock(), ttl)
    }

    /// Gives the room's slot back if it has been idle for `ttl`: from now on nobody can join
    /// it, and its log and history are returned to be parked.
    pub(super) fn retire(&self, ttl: Duration) -> Option<RoomMemory> {
        let mut st = self.lock();
        if st.retired || !idle(&st, ttl) {
            return None;
        }
        st.retired = true;
        if let Some(shared) = self.shared() {
            shared.close();
        }
        Some(RoomMemory {
            log: std::mem::replace(&mut st.log, Box::new(Retired)),
            history: std::mem::take(&mut st.history),
        })
    }

    pub(super) fn publish_presence(&self, st: &mut RoomState) {
        let members = st.members.iter().map(|m| m.member.clone()).collect();
        self.publish(st, None, EventBody::Presence { members });
    }

    /// This node's members changed (`left` went): a local room announces its roster; in
    /// cluster mode the roster of every node is announced once the shared one is updated.
    fn members_changed(&self, st: &mut RoomState, left: Vec<String>) {
        match self.shared() {
            Some(shared) => shared.presence(left),
            None => self.publish_presence(st),
        }
    }

    /// Assigns the next seq, records the frame for replay and hands it to every member.
    /// Members whose queue is full are dropped as slow consumers (their session closes with
    /// the seq to resume from) and the others are told who left.
    pub(super) fn publish(
        &self,
        st: &mut RoomState,
        turn_id: Option<Uuid>,
        body: EventBody,
    ) -> u64 {
        self.publish_with(st, turn_id, body, None)
    }

    /// [`Room::publish`], with the history entry an `end` adds (cluster mode stores it with
    /// the event; a local room has already added it).
    pub(super) fn publish_with(
        &self,
        st: &mut RoomState,
        turn_id: Option<Uuid>,
        body: EventBody,
        history: Option<&TurnSnapshot>,
    ) -> u64 {
        let kind = body.kind();
        let mut ev = self.event(turn_id, body);
        if let Some(shared) = self.shared() {
            if !shared.emit(&ev, history) {
                crate::metrics::cluster_error("outbox_full");
                self.cut_turn(st);
            }
            return 0;
        }
        let (seq, _, text) = st.log.append(kind, &mut |seq| {
            ev.seq = Some(seq);
            ev.encode()
        });
        let dropped = self.fan_out(st, seq, kind, &text);
        if !dropped.is_empty() {
            self.publish_presence(st);
        }
        seq
    }

    /// Hands a logged event to every member and viewer. Members whose queue is full are
    /// dropped as slow consumers (their session closes with the seq to resume from); the
    /// sessions dropped are returned so the others can be told.
    pub(super) fn fan_out(
        &self,
        st: &mut RoomState,
        seq: u64,
        kind: &'static str,
        text: &Arc<str>,
    ) -> Vec<String> {
        let mut dropped = Vec::new();
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
                    dropped.push(m.member.session_id.to_string());
                    false
                }
                Err(TrySendError::Closed(_)) => {
                    dropped.push(m.member.session_id.to_string());
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
        dropped
    }

    /// Cuts short the turn this node runs (its events can no longer be written).
    pub(super) fn cut_turn(&self, st: &RoomState) {
        if let Some(active) = &st.active {
            active.cancel.cancel();
        }
    }
}

fn idle(st: &RoomState, ttl: Duration) -> bool {
    let waiting = st
        .view
        .as_ref()
        .is_some_and(|v| !v.pending.is_empty() || v.active.is_some());
    !waiting
        && st.members.is_empty()
        && st.viewers.iter().all(|v| v.tx.is_closed())
        && st.active.is_none()
        && st.queued.is_empty()
        && st.last_activity.elapsed() >= ttl
}

pub(super) fn snapshot(st: &RoomState) -> RoomSnapshot {
    let (members, active) = match &st.view {
        Some(view) => (view.roster.clone(), view.active.clone()),
        None => (
            st.members.iter().map(|m| m.member.clone()).collect(),
            st.active.as_ref().map(|a| a.snapshot.clone()),
        ),
    };
    RoomSnapshot {
        epoch: st.log.epoch().to_string(),
        members,
        turns: st.history.iter().cloned().collect(),
        active,
    }
}
