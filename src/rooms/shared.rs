//! A room in cluster mode: its log, history, turn queue, lease and presence live in Redis
//! (`crate::cluster`), and this node keeps a mirror for its own members.
//!
//! Three tasks per room a node has open:
//! - the **writer** sends this node's events to the room's log, in order, in batches (one
//!   script call for many deltas), from a bounded outbox;
//! - the **pump** takes the room's published events, in seq order, into the local mirror
//!   and fans them out to local members; a skipped seq, a full inbox or a dropped
//!   connection makes it read the gap back from the stream, and a new epoch makes it reload
//!   the room and resync its members;
//! - the **runner** takes the room's turn lease when prompts wait, runs them one at a time,
//!   renews the lease while it runs, and ends turns left by a node that stopped.
//!
//! Every member on every node sees the same events with the same seqs and the same bytes,
//! because only the scripts assign seqs and build the bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::room::RoomState;
use super::{Room, RoomKey};
use crate::chat::{Rejection, TurnEngine, TurnOwner, TurnRequest};
use crate::cluster::{BusMsg, Claim, Cluster, ClusterError, Emit, LogFrame, RoomKeys};
use crate::config::Quality;
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::{EventBody, Member, ServerEvent, TurnSnapshot};

/// Room messages waiting for the pump; beyond this the room is marked lagged and catches up
/// from the stream.
const INBOX: usize = 1_024;
/// Outbox entries written per round trip.
const BATCH: usize = 256;

/// One thing this node has to write for the room.
enum Op {
    Emit(Emit),
    /// This node's members changed (or their entries need renewing).
    Presence {
        left: Vec<String>,
        force: bool,
    },
    /// Ephemeral: published, not stored.
    Relay(Vec<u8>),
}

/// A turn as it waits in the room's queue in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct QueuedTurn {
    from: Member,
    prompt: String,
    quality: Option<Quality>,
    use_cache: bool,
    tenant: String,
    user: String,
    /// Carried to the node that runs the turn, so its spans join the sender's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<crate::telemetry::TraceParent>,
}

/// The cluster side of one room on this node.
pub(super) struct Shared {
    pub cluster: Arc<Cluster>,
    pub keys: RoomKeys,
    outbox: Mutex<VecDeque<Op>>,
    limit: usize,
    /// Ops accepted into the outbox, and ops the writer has finished with: a turn waits for
    /// its `end` to be written before the next claim.
    enqueued: AtomicU64,
    written: watch::Sender<u64>,
    wake_writer: Notify,
    pub wake_runner: Notify,
    /// Ends the room's tasks (the room retired on this node).
    pub stop: CancellationToken,
    subscription: Mutex<Option<crate::cluster::Subscription>>,
    lagged: Arc<AtomicBool>,
}

/// What opening a room in cluster mode gives: the mirror's contents and the running parts.
pub(super) struct Opened {
    pub shared: Arc<Shared>,
    pub loaded: crate::cluster::Loaded,
    inbox: mpsc::Receiver<BusMsg>,
}

/// Subscribes first, then loads, so nothing published in between is missed (the pump drops
/// what the load already had).
pub(super) async fn open(
    cluster: &Arc<Cluster>,
    key: &RoomKey,
    outbox_limit: usize,
) -> Result<Opened, ClusterError> {
    let keys = cluster.room_keys(&key.tenant, &key.name);
    let (tx, inbox) = mpsc::channel(INBOX);
    let subscription = cluster.subscribe(&keys, tx).await?;
    let loaded = cluster.load(&keys).await?;
    let shared = Arc::new(Shared {
        cluster: cluster.clone(),
        keys,
        outbox: Mutex::new(VecDeque::new()),
        limit: outbox_limit,
        enqueued: AtomicU64::new(0),
        written: watch::channel(0).0,
        wake_writer: Notify::new(),
        wake_runner: Notify::new(),
        stop: CancellationToken::new(),
        lagged: subscription.lagged.clone(),
        subscription: Mutex::new(Some(subscription)),
    });
    Ok(Opened {
        shared,
        loaded,
        inbox,
    })
}

/// Starts the room's three tasks.
pub(super) fn start(
    room: &Arc<Room>,
    inbox: mpsc::Receiver<BusMsg>,
    engine: Arc<TurnEngine>,
    life: Arc<Lifecycle>,
) {
    tokio::spawn(writer(Arc::downgrade(room)));
    tokio::spawn(pump(Arc::downgrade(room), inbox));
    tokio::spawn(runner(Arc::downgrade(room), engine, life));
}

impl Opened {
    pub fn into_parts(self) -> (Arc<Shared>, crate::cluster::Loaded, mpsc::Receiver<BusMsg>) {
        (self.shared, self.loaded, self.inbox)
    }
}

impl Shared {
    /// Queues an op for the writer; false when the outbox is full (Redis is slow or away).
    fn push(&self, op: Op) -> bool {
        let mut q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.limit {
            return false;
        }
        q.push_back(op);
        self.enqueued.fetch_add(1, Ordering::AcqRel);
        drop(q);
        self.wake_writer.notify_one();
        true
    }

    /// Queues a room event; false when refused.
    pub fn emit(&self, ev: &ServerEvent, history: Option<&TurnSnapshot>) -> bool {
        let Some((head, tail)) = ev.encode_around_seq() else {
            return false;
        };
        let history = history
            .and_then(|h| serde_json::to_string(h).ok())
            .unwrap_or_default();
        self.push(Op::Emit(Emit {
            kind: ev.body.kind(),
            head,
            tail,
            turn_id: ev.turn_id.map(|t| t.to_string()).unwrap_or_default(),
            history,
        }))
    }

    /// This node's roster changed: `left` are the sessions that went.
    pub fn presence(&self, left: Vec<String>) {
        if !self.push(Op::Presence { left, force: false }) {
            crate::metrics::cluster_error("presence");
        }
    }

    /// Relays an ephemeral event from `session` to the room's members on every node.
    pub fn relay(&self, session: Uuid, frame: &str) {
        let payload = crate::cluster::ephemeral(&session.to_string(), frame);
        // Best effort, like typing itself.
        let _ = self.push(Op::Relay(payload));
    }

    /// Waits until everything queued so far has been written (or failed), within a bound.
    pub async fn flushed(&self) {
        let target = self.enqueued.load(Ordering::Acquire);
        let mut rx = self.written.subscribe();
        let wait = rx.wait_for(|done| *done >= target);
        let _ = tokio::time::timeout(self.cluster.lease, wait).await;
    }

    fn take_batch(&self) -> Vec<Op> {
        let mut q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    pub fn close(&self) {
        self.stop.cancel();
        self.subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

// ---------------------------------------------------------------------------------------
// The writer.

/// Writes the outbox in order; renews this node's presence entries while it has members.
async fn writer(room: Weak<Room>) {
    let Some((shared, renew_every)) = room.upgrade().and_then(|r| {
        let s = r.shared()?.clone();
        let every = s.cluster.lease * 3 / 10;
        Some((s, every))
    }) else {
        return;
    };
    let mut renew = tokio::time::interval(renew_every);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = shared.wake_writer.notified() => {}
            _ = renew.tick() => {
                let has_members = room.upgrade().is_some_and(|r| r.has_local_members());
                if has_members {
                    shared.push(Op::Presence { left: Vec::new(), force: false });
                }
            }
        }
        loop {
            let batch = shared.take_batch();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            write_batch(&room, &shared, batch).await;
            shared.written.send_modify(|done| *done += n);
        }
    }
}

/// One batch: consecutive events go in one script call; presence and relays in their own.
/// While the store is known to be down the batch fails at once instead of waiting out a
/// timeout per call.
async fn write_batch(room: &Weak<Room>, shared: &Shared, batch: Vec<Op>) {
    if shared.cluster.is_down() {
        crate::metrics::cluster_error("emit");
        if let Some(room) = room.upgrade() {
            room.cut_running_turn();
        }
        return;
    }
    let mut events = Vec::new();
    for op in batch {
        match op {
            Op::Emit(e) => events.push(e),
            Op::Presence { left, force } => {
                write_events(room, shared, std::mem::take(&mut events)).await;
                write_presence(room, shared, left, force).await;
            }
            Op::Relay(payload) => {
                write_events(room, shared, std::mem::take(&mut events)).await;
                if shared.cluster.relay(&shared.keys, payload).await.is_err() {
                    crate::metrics::cluster_error("relay");
                }
            }
        }
    }
    write_events(room, shared, events).await;
}

async fn write_events(room: &Weak<Room>, shared: &Shared, events: Vec<Emit>) {
    if events.is_empty() {
        return;
    }
    match shared.cluster.emit(&shared.keys, &events).await {
        // A refused event: its turn is no longer the room's running one (another node ended
        // it, or the store lost it), so generating the rest is wasted.
        Ok((_, seqs)) if seqs.contains(&0) => {
            tracing::warn!("turn events refused by the room's log; the turn is cut short");
            if let Some(room) = room.upgrade() {
                room.cut_running_turn();
            }
        }
        Ok(_) => {}
        Err(e) => {
            crate::metrics::cluster_error("emit");
            tracing::warn!(error = %e, "room events not written; the running turn is cut short");
            if let Some(room) = room.upgrade() {
                room.cut_running_turn();
            }
        }
    }
}

async fn write_presence(room: &Weak<Room>, shared: &Shared, left: Vec<String>, force: bool) {
    let Some(room) = room.upgrade() else { return };
    let mine = room.local_members();
    let ev = room.event(
        None,
        EventBody::Presence {
            members: Vec::new(),
        },
    );
    let Some((head, tail)) = ev.encode_around_seq() else {
        return;
    };
    let Some(tail) = tail.strip_suffix("[]}") else {
        return;
    };
    let result = shared
        .cluster
        .presence(&shared.keys, (&head, tail), force, &left, &mine)
        .await;
    if result.is_err() {
        crate::metrics::cluster_error("presence");
    }
}

// ---------------------------------------------------------------------------------------
// The pump.

/// What the mirror made of a published event.
pub(super) enum Accepted {
    /// Delivered, or already had.
    Done,
    /// A seq was skipped: read the gap from the stream.
    Gap,
    /// Another epoch: the log was lost or rotated; reload.
    Reset,
}

/// Delivers the room's events in order.
async fn pump(room: Weak<Room>, mut inbox: mpsc::Receiver<BusMsg>) {
    let Some(shared) = room.upgrade().and_then(|r| r.shared().cloned()) else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = shared.stop.cancelled() => return,
            m = inbox.recv() => m,
        };
        let Some(msg) = msg else { return };
        let Some(r) = room.upgrade() else { return };
        match msg {
            BusMsg::Event {
                seq,
                epoch,
                kind,
                frame,
            } => {
                let frame = LogFrame { seq, kind, frame };
                match r.accept(&epoch, &frame) {
                    Accepted::Done => {}
                    Accepted::Gap => catch_up(&r, &shared, "gap").await,
                    Accepted::Reset => reload(&r, &shared).await,
                }
            }
            BusMsg::Cancel(turn_id) => r.cancel_local(&turn_id),
            BusMsg::Ephemeral { session, frame } => r.relay_local(&session, frame),
            BusMsg::Lagged | BusMsg::Signal(_) => {}
        }
        if shared.lagged.swap(false, Ordering::AcqRel) {
            catch_up(&r, &shared, "lagged").await;
        }
    }
}

/// Reads what the mirror misses from the stream, retrying while Redis is away.
pub(super) async fn catch_up(room: &Room, shared: &Shared, cause: &'static str) {
    crate::metrics::cluster_gap_fill(cause);
    tracing::debug!(room = %room.key.name, cause, "catching up from the stream");
    let mut backoff = Duration::from_millis(100);
    loop {
        let (epoch, head) = room.mirror_position();
        match shared.cluster.range(&shared.keys, head).await {
            Ok(Some((e, _, frames))) if e == epoch => {
                let contiguous = frames.first().is_none_or(|f| f.seq <= head + 1);
                if !contiguous {
                    return reload(room, shared).await;
                }
                for f in &frames {
                    if !matches!(room.accept(&e, f), Accepted::Done) {
                        return reload(room, shared).await;
                    }
                }
                // A full batch: there may be more.
                if frames.len() < Cluster::RANGE_BATCH {
                    return;
                }
            }
            Ok(_) => return reload(room, shared).await,
            Err(_) => {
                crate::metrics::cluster_error("range");
                if !pause(shared, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Loads the room again (a new epoch) and resyncs every local member.
async fn reload(room: &Room, shared: &Shared) {
    tracing::debug!(room = %room.key.name, "reloading the room (new epoch)");
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared.cluster.load(&shared.keys).await {
            Ok(loaded) => return room.reset(loaded),
            Err(_) => {
                crate::metrics::cluster_error("load");
                if !pause(shared, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `backoff` (doubling to 1 s); false when the room stopped meanwhile.
async fn pause(shared: &Shared, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(1));
    tokio::select! {
        _ = shared.stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

// ---------------------------------------------------------------------------------------
// The runner.

/// Runs the room's turns on this node whenever it holds the lease.
async fn runner(room: Weak<Room>, engine: Arc<TurnEngine>, life: Arc<Lifecycle>) {
    let Some(shared) = room.upgrade().and_then(|r| r.shared().cloned()) else {
        return;
    };
    let tick = shared.cluster.lease_tick();
    loop {
        let pending = room.upgrade().is_some_and(|r| r.has_pending_turns());
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = shared.wake_runner.notified() => {}
            _ = tokio::time::sleep(tick), if pending => {}
        }
        if life.is_draining() {
            continue;
        }
        // Run (or end) turns while the lease gives them.
        loop {
            let Some(r) = room.upgrade() else { return };
            let claim = shared.cluster.claim(&shared.keys).await;
            let what = match &claim {
                Ok(Claim::Run(_)) => "run",
                Ok(Claim::Orphan { .. }) => "orphan",
                Ok(Claim::Held) => "held",
                Ok(Claim::Idle) => "idle",
                Err(_) => "error",
            };
            tracing::debug!(room = %r.key.name, claim = what, "turn lease");
            match claim {
                Ok(Claim::Run(item)) => run_claimed(&r, &shared, &item, &engine, &life).await,
                Ok(Claim::Orphan { item, node }) => {
                    if !end_orphan(&r, &shared, &item, &node).await {
                        break;
                    }
                }
                Ok(Claim::Held | Claim::Idle) => break,
                Err(_) => {
                    crate::metrics::cluster_error("claim");
                    break;
                }
            }
        }
    }
}

/// "turn_id message_seq json" → the turn.
fn parse_item(item: &str) -> Option<(TurnRequest, u64)> {
    let mut parts = item.splitn(3, ' ');
    let turn_id: Uuid = parts.next()?.parse().ok()?;
    let message_seq: u64 = parts.next()?.parse().ok()?;
    let q: QueuedTurn = serde_json::from_str(parts.next()?).ok()?;
    let turn = TurnRequest {
        turn_id,
        from: q.from,
        prompt: q.prompt,
        quality: q.quality,
        use_cache: q.use_cache,
        chain: None,
        retrieval: true,
        client_history: false,
        sampling: Default::default(),
        client_system: Vec::new(),
        tools: Default::default(),
        conversation: None,
        server_tools: true,
        trace: q.trace,
        owner: TurnOwner {
            principal: crate::auth::Principal {
                tenant: Arc::from(q.tenant),
                user: Arc::from(q.user),
            },
            permit: None,
        },
    };
    Some((turn, message_seq))
}

/// The queue entry for a prompt.
pub(super) fn queue_entry(turn: &TurnRequest) -> String {
    let q = QueuedTurn {
        from: turn.from.clone(),
        prompt: turn.prompt.clone(),
        quality: turn.quality,
        use_cache: turn.use_cache,
        tenant: turn.owner.principal.tenant.to_string(),
        user: turn.owner.principal.user.to_string(),
        trace: turn.trace.clone(),
    };
    serde_json::to_string(&q).unwrap_or_default()
}

/// Runs one claimed turn while renewing the lease, then waits for its events to be written
/// so the next claim sees it ended.
async fn run_claimed(
    room: &Arc<Room>,
    shared: &Arc<Shared>,
    item: &str,
    engine: &TurnEngine,
    life: &Lifecycle,
) {
    let Some((turn, message_seq)) = parse_item(item) else {
        tracing::error!("unreadable queued turn; ending it");
        end_orphan(room, shared, item, "").await;
        return;
    };
    // The turn's context is the history as of now, not as far as this node's mirror got.
    catch_up(room, shared, "claim").await;
    room.expect_turn(turn.turn_id, message_seq);
    let held = CancellationToken::new();
    tokio::spawn(keep_lease(
        Arc::downgrade(room),
        shared.clone(),
        held.clone(),
    ));
    let span = crate::chat::turn_span(&turn);
    use tracing::Instrument;
    // Tracked with its writes, so a draining node's shutdown waits for the turn's `end` to
    // reach the log, not only for the turn.
    let run = async {
        engine.run(room.as_ref(), turn, life).await;
        shared.flushed().await;
    };
    life.turns.track_future(run.instrument(span)).await;
    held.cancel();
}

/// Renews the lease until `done`; a lease lost to another node cuts the turn short (that
/// node ends it, and this node's further events for it are refused by the log script).
async fn keep_lease(room: Weak<Room>, shared: Arc<Shared>, done: CancellationToken) {
    let mut tick = tokio::time::interval(shared.cluster.lease_tick());
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        match shared.cluster.renew(&shared.keys).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(room = %shared.keys.channel, "turn lease lost; the turn is cut short");
                if let Some(r) = room.upgrade() {
                    r.cut_running_turn();
                }
                return;
            }
            Err(_) => crate::metrics::cluster_error("renew"),
        }
    }
}

/// Ends a turn its node left running: `error` (`node_lost`, or `cluster_unavailable` when
/// it was this node's own turn whose end could not be written) and `end(error, partial)`.
/// False when the entry is unreadable (not written by confab): the runner then waits for
/// its next wake instead of claiming it again at once.
async fn end_orphan(room: &Room, shared: &Shared, item: &str, node: &str) -> bool {
    let Some(turn_id) = item.split(' ').next().and_then(|t| t.parse::<Uuid>().ok()) else {
        tracing::error!("unreadable running turn in the cluster store");
        return false;
    };
    catch_up(room, shared, "claim").await;
    let (code, message) = if node == shared.cluster.node {
        (
            ErrorCode::ClusterUnavailable,
            "the cluster store was unreachable while this turn ran; send the prompt again",
        )
    } else {
        crate::metrics::cluster_node_lost();
        tracing::warn!(%turn_id, node, "turn left running by a stopped node; ending it");
        (
            ErrorCode::NodeLost,
            "the node running this turn stopped; send the prompt again",
        )
    };
    room.end_foreign_turn(turn_id, Rejection::new(code, message));
    shared.flushed().await;
    true
}

// ---------------------------------------------------------------------------------------
// The mirror: the room state this node keeps, fed by `accept`.

/// Applies one logged event to the room's view: who is in the room, which prompts wait,
/// the running turn's answer so far, and the history (turns that ended after `hist_seq`).
pub(super) fn project(st: &mut RoomState, frame: &LogFrame, hist_seq: u64, history_turns: usize) {
    let tracked = matches!(
        &*frame.kind,
        "message" | "start" | "delta" | "end" | "presence"
    );
    if !tracked || st.view.is_none() {
        return;
    }
    let Ok(ev) = serde_json::from_str::<ServerEvent>(&frame.frame) else {
        return;
    };
    let Some(view) = st.view.as_mut() else { return };
    match (ev.body, ev.turn_id) {
        (EventBody::Presence { members }, _) => view.roster = members,
        (EventBody::Message { from, text, .. }, Some(t)) => {
            view.pending.push_back((t, from, text));
            while view.pending.len() > 64 {
                view.pending.pop_front();
            }
        }
        (EventBody::Start { .. }, Some(t)) => {
            let (from, prompt) = match view.pending.iter().position(|p| p.0 == t) {
                Some(i) => view.pending.remove(i).map(|p| (p.1, p.2)),
                None => None,
            }
            .unwrap_or_else(|| (unknown_member(), String::new()));
            view.active = Some(TurnSnapshot {
                turn_id: t,
                from,
                prompt,
                answer: String::new(),
                finish_reason: None,
                partial: false,
            });
        }
        (EventBody::Delta { text }, Some(t)) => {
            if let Some(a) = view.active.as_mut().filter(|a| a.turn_id == t) {
                a.answer.push_str(&text);
            }
        }
        (
            EventBody::End {
                finish_reason,
                partial,
            },
            Some(t),
        ) => {
            view.pending.retain(|p| p.0 != t);
            st.permits.remove(&t);
            let ended = view.active.take_if(|a| a.turn_id == t);
            if let Some(mut snap) = ended.filter(|_| frame.seq > hist_seq) {
                snap.finish_reason = Some(finish_reason);
                snap.partial = partial;
                if !snap.answer.is_empty() || finish_reason == crate::protocol::FinishReason::Stop {
                    st.history.push_back(snap);
                }
                while st.history.len() > history_turns {
                    st.history.pop_front();
                }
            }
        }
        _ => {}
    }
}

fn unknown_member() -> Member {
    Member {
        session_id: Uuid::nil(),
        name: String::new(),
    }
}
