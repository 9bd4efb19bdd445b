//! The room operations, each one script call: typed arguments in, typed replies out.

use std::sync::Arc;

use redis::{Script, ScriptInvocation, Value};

use super::{Cluster, ClusterError, RoomKeys};
use crate::config::RoomsConfig;

/// Room settings every script needs.
#[derive(Debug, Clone)]
pub struct RoomParams {
    maxlen: usize,
    max_bytes: usize,
    ttl_ms: u64,
    history_turns: usize,
    max_queue: usize,
}

impl RoomParams {
    pub fn new(cfg: &RoomsConfig) -> Self {
        Self {
            maxlen: cfg.replay_events,
            max_bytes: cfg.replay_bytes,
            ttl_ms: cfg.idle_ttl_ms.max(1),
            history_turns: cfg.history_turns.max(1),
            max_queue: cfg.max_queued_turns,
        }
    }
}

/// One event of a room's log.
#[derive(Debug, Clone)]
pub struct LogFrame {
    pub seq: u64,
    pub kind: String,
    pub frame: Arc<str>,
}

/// One event to append: its bytes around the seq, and for turn events the turn id (and, for
/// an `end`, the history entry it adds).
#[derive(Debug, Clone)]
pub struct Emit {
    pub kind: &'static str,
    pub head: String,
    pub tail: String,
    pub turn_id: String,
    pub history: String,
}

/// A room as a node opens it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub epoch: String,
    pub head: u64,
    /// The history holds the turns ended up to this seq.
    pub hist_seq: u64,
    pub frames: Vec<LogFrame>,
    pub history: Vec<String>,
    pub roster: Vec<String>,
}

/// What a prompt submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Queued; its `message` event has this seq.
    Queued(u64),
    Duplicate,
    Busy,
}

/// What the turn lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Another node runs the room.
    Held,
    /// Nothing to run; the lease was given back.
    Idle,
    /// This queued turn ("turn_id message_seq json") is now the room's running turn.
    Run(String),
    /// A turn left running by `node` (which stopped); end it.
    Orphan { item: String, node: String },
}

/// Where a cancelled turn was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    Queued,
    Running,
    Unknown,
}

impl Cluster {
    fn invocation<'a>(&self, script: &'a Script, keys: &RoomKeys) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &keys.keys {
            inv.key(k);
        }
        inv.arg(&keys.channel)
            .arg(format!("{:016x}", fastrand::u64(..)))
            .arg(self.params.maxlen)
            .arg(self.params.ttl_ms)
            .arg(self.params.history_turns);
        inv
    }

    /// Appends events in order; the epoch and each event's seq (0: refused, its turn is no
    /// longer the running one).
    pub async fn emit(
        &self,
        keys: &RoomKeys,
        events: &[Emit],
    ) -> Result<(String, Vec<u64>), ClusterError> {
        let mut inv = self.invocation(&self.scripts.emit, keys);
        inv.arg(events.len());
        for e in events {
            inv.arg(e.kind)
                .arg(&e.head)
                .arg(&e.tail)
                .arg(&e.turn_id)
                .arg(&e.history);
        }
        let reply = array(self.invoke(&inv).await?)?;
        let mut it = reply.into_iter();
        let epoch = text(it.next())?;
        let seqs = it.map(|v| int(Some(v))).collect::<Result<_, _>>()?;
        Ok((epoch, seqs))
    }

    /// Queues a turn behind its `message` event, unless the prompt id was seen or the queue
    /// is full.
    pub async fn submit(
        &self,
        keys: &RoomKeys,
        client_msg_id: Option<&str>,
        message: (&str, &str),
        turn_id: &str,
        turn_json: &str,
    ) -> Result<Submitted, ClusterError> {
        let mut inv = self.invocation(&self.scripts.submit, keys);
        inv.arg(client_msg_id.unwrap_or(""))
            .arg(self.params.max_queue)
            .arg(message.0)
            .arg(message.1)
            .arg(turn_id)
            .arg(turn_json);
        let mut it = array(self.invoke(&inv).await?)?.into_iter();
        match text(it.next())?.as_str() {
            "ok" => Ok(Submitted::Queued(int(it.next())?)),
            "duplicate" => Ok(Submitted::Duplicate),
            "busy" => Ok(Submitted::Busy),
            other => Err(ClusterError::Reply(format!("submit: {other}"))),
        }
    }

    /// Takes (or keeps) the room's turn lease and says what to run.
    pub async fn claim(&self, keys: &RoomKeys) -> Result<Claim, ClusterError> {
        let mut inv = self.invocation(&self.scripts.claim, keys);
        inv.arg(&self.node).arg(self.lease_ttl_ms());
        let mut it = array(self.invoke(&inv).await?)?.into_iter();
        match text(it.next())?.as_str() {
            "held" => Ok(Claim::Held),
            "idle" => Ok(Claim::Idle),
            "run" => Ok(Claim::Run(text(it.next())?)),
            "orphan" => Ok(Claim::Orphan {
                item: text(it.next())?,
                node: text(it.next())?,
            }),
            other => Err(ClusterError::Reply(format!("claim: {other}"))),
        }
    }

    /// Extends the lease; false when this node no longer holds it.
    pub async fn renew(&self, keys: &RoomKeys) -> Result<bool, ClusterError> {
        let mut inv = self.invocation(&self.scripts.renew, keys);
        inv.arg(&self.node).arg(self.lease_ttl_ms());
        Ok(int(Some(self.invoke(&inv).await?))? == 1)
    }

    /// How long the lease lives after a renewal: a little under `lease_ms`, so that with
    /// the other nodes' polling a dead holder's turn ends within `lease_ms`.
    fn lease_ttl_ms(&self) -> u64 {
        (self.lease.as_millis() as u64) * 7 / 10
    }

    /// How often a holder renews its lease, and how often nodes with work waiting look for
    /// a lease that ran out.
    pub fn lease_tick(&self) -> std::time::Duration {
        self.lease / 10
    }

    /// Cancels a queued turn (ending it with `end`) or asks the running one's node to.
    pub async fn cancel(
        &self,
        keys: &RoomKeys,
        turn_id: &str,
        end: (&str, &str),
    ) -> Result<Cancelled, ClusterError> {
        let mut inv = self.invocation(&self.scripts.cancel, keys);
        inv.arg(turn_id).arg(end.0).arg(end.1);
        match text(Some(self.invoke(&inv).await?))?.as_str() {
            "queued" => Ok(Cancelled::Queued),
            "running" => Ok(Cancelled::Running),
            _ => Ok(Cancelled::Unknown),
        }
    }

    /// Records this node's members of a room (and who left) and, when the roster changed,
    /// announces it with a `presence` event (head, and tail up to the members array).
    /// Returns that event's seq, or 0.
    pub async fn presence(
        &self,
        keys: &RoomKeys,
        event: (&str, &str),
        force: bool,
        left: &[String],
        mine: &[(String, String)],
    ) -> Result<u64, ClusterError> {
        let mut inv = self.invocation(&self.scripts.presence, keys);
        inv.arg(crate::protocol::unix_ms())
            .arg(self.lease.as_millis() as u64)
            .arg(event.0)
            .arg(event.1)
            .arg(if force { "1" } else { "0" })
            .arg(left.len());
        for sid in left {
            inv.arg(sid);
        }
        inv.arg(mine.len());
        for (sid, member) in mine {
            inv.arg(sid).arg(member);
        }
        int(Some(self.invoke(&inv).await?))
    }

    /// The room's state for a node that opens it.
    pub async fn load(&self, keys: &RoomKeys) -> Result<Loaded, ClusterError> {
        let mut inv = self.invocation(&self.scripts.load, keys);
        inv.arg(crate::protocol::unix_ms())
            .arg(self.params.max_bytes);
        let mut it = array(self.invoke(&inv).await?)?.into_iter();
        let epoch = text(it.next())?;
        let head = int(it.next())?;
        let hist_seq = int(it.next())?;
        let _running = text(it.next())?;
        let frames = frames(it.next())?;
        let history = texts(it.next())?;
        let roster = texts(it.next())?;
        Ok(Loaded {
            epoch,
            head,
            hist_seq,
            frames,
            history,
            roster,
        })
    }

    /// Events one [`Cluster::range`] call returns at most.
    pub const RANGE_BATCH: usize = 512;

    /// The log after `after` (at most [`Cluster::RANGE_BATCH`] events), with the epoch and
    /// head; `None` when the room's state is gone.
    pub async fn range(
        &self,
        keys: &RoomKeys,
        after: u64,
    ) -> Result<Option<(String, u64, Vec<LogFrame>)>, ClusterError> {
        let mut inv = self.invocation(&self.scripts.range, keys);
        inv.arg(format!("{}-1", after + 1)).arg(Self::RANGE_BATCH);
        let mut it = array(self.invoke(&inv).await?)?.into_iter();
        let epoch = text(it.next())?;
        if epoch.is_empty() {
            return Ok(None);
        }
        let head = int(it.next())?;
        Ok(Some((epoch, head, frames(it.next())?)))
    }
}

fn reply(what: &str, v: &Option<Value>) -> ClusterError {
    ClusterError::Reply(format!("expected {what}, got {v:?}"))
}

pub(super) fn array(v: Value) -> Result<Vec<Value>, ClusterError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(reply("an array", &Some(other))),
    }
}

pub(super) fn text(v: Option<Value>) -> Result<String, ClusterError> {
    match v {
        Some(Value::BulkString(b)) => {
            String::from_utf8(b).map_err(|e| ClusterError::Reply(e.to_string()))
        }
        Some(Value::SimpleString(s)) => Ok(s),
        Some(Value::Okay) => Ok("OK".into()),
        Some(Value::Int(n)) => Ok(n.to_string()),
        Some(Value::Nil) => Ok(String::new()),
        other => Err(reply("a string", &other)),
    }
}

pub(super) fn int(v: Option<Value>) -> Result<u64, ClusterError> {
    match v {
        Some(Value::Int(n)) => Ok(n.max(0) as u64),
        Some(Value::BulkString(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClusterError::Reply("expected an integer".into())),
        other => Err(reply("an integer", &other)),
    }
}

pub(super) fn texts(v: Option<Value>) -> Result<Vec<String>, ClusterError> {
    match v {
        Some(v) => array(v)?.into_iter().map(|x| text(Some(x))).collect(),
        None => Ok(Vec::new()),
    }
}

/// XRANGE entries `[id, [k, kind, d, frame]]` as frames; the seq is the id's first part.
fn frames(v: Option<Value>) -> Result<Vec<LogFrame>, ClusterError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for entry in array(v)? {
        let mut parts = array(entry)?.into_iter();
        let id = text(parts.next())?;
        let seq = id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClusterError::Reply(format!("stream id {id}")))?;
        let fields = texts(parts.next())?;
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|c| c.first().map(String::as_str) == Some(name))
                .and_then(|c| c.get(1).cloned())
                .unwrap_or_default()
        };
        out.push(LogFrame {
            seq,
            kind: field("k"),
            frame: Arc::from(field("d")),
        });
    }
    Ok(out)
}
