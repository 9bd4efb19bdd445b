//! A room's ordered event log: it assigns each room event its `seq` and keeps the tail for
//! clients that reconnect. In cluster mode the shared log (Redis, `rooms/shared.rs`) assigns
//! the seqs, and the same in-memory log is the node's mirror of it, filled with
//! [`RoomLog::record`]; each node keeps fanning out to its own members.
//!
//! A room nobody is in gives its slot back soon (`rooms.empty_ttl_ms`); its log and history
//! are *parked* with the backplane, bounded in bytes, and handed back when the room opens
//! again, so a member who returns resumes where it was.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;

use super::RoomKey;
use super::replay::ReplayBuffer;
use crate::protocol::TurnSnapshot;

/// One logged event: its seq, its type (a metric label) and its encoded bytes.
pub type Frame = (u64, &'static str, Arc<str>);

/// The log of one room. Called under the room's lock, so appends are ordered.
pub trait RoomLog: Send {
    /// The log's epoch: new for every log, so a seq is only meaningful with its epoch. A
    /// room whose log was lost (a restart, a parked log evicted) starts a new epoch.
    fn epoch(&self) -> &str;
    /// The seq of the last event appended (0 before the first).
    fn head(&self) -> u64;
    /// Appends one event: `encode` is given the event's seq and returns its bytes.
    fn append(&mut self, kind: &'static str, encode: &mut dyn FnMut(u64) -> Arc<str>) -> Frame;
    /// The events after `last_seq`, or `None` when the log no longer holds them all (or
    /// `last_seq` is from the future): the client must resync.
    fn since(&self, last_seq: u64) -> Option<Vec<Frame>>;
    /// Bytes held (parked logs are bounded by it).
    fn bytes(&self) -> usize;
    /// Cluster mode: records an event the shared log already numbered (the mirror).
    fn record(&mut self, frame: Frame);
}

/// What outlives a room's slot: its log and its conversation.
pub struct RoomMemory {
    pub log: Box<dyn RoomLog>,
    pub history: VecDeque<TurnSnapshot>,
}

impl RoomMemory {
    fn bytes(&self) -> usize {
        self.log.bytes()
            + self
                .history
                .iter()
                .map(|t| t.prompt.len() + t.answer.len() + t.from.name.len() + 64)
                .sum::<usize>()
    }
}

/// Opens each room's log when the room is created, and keeps it while the room is empty.
pub trait Backplane: Send + Sync {
    /// The room's memory: what was parked for it, or a new log.
    fn open(&self, key: &RoomKey) -> RoomMemory;
    /// Keeps an empty room's memory for its return.
    fn park(&self, key: &RoomKey, memory: RoomMemory);
}

/// Logs in this process's memory, bounded by events and bytes per room, and parked logs
/// bounded by bytes and age over all rooms.
pub struct LocalBackplane {
    replay_events: usize,
    replay_bytes: usize,
    /// moka needs cloneable values: the memory is taken out when the room opens again.
    parked: Cache<RoomKey, Arc<Mutex<Option<RoomMemory>>>>,
}

impl LocalBackplane {
    pub fn new(cfg: &crate::config::RoomsConfig) -> Self {
        let parked = Cache::builder()
            .max_capacity(cfg.parked_bytes)
            .weigher(|_k: &RoomKey, v: &Arc<Mutex<Option<RoomMemory>>>| {
                let g = v.lock().unwrap_or_else(|p| p.into_inner());
                g.as_ref()
                    .map_or(0, RoomMemory::bytes)
                    .min(u32::MAX as usize) as u32
            })
            .time_to_live(Duration::from_millis(cfg.idle_ttl_ms))
            .build();
        Self {
            replay_events: cfg.replay_events,
            replay_bytes: cfg.replay_bytes,
            parked,
        }
    }
}

impl Backplane for LocalBackplane {
    fn open(&self, key: &RoomKey) -> RoomMemory {
        let parked = self
            .parked
            .remove(key)
            .and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take());
        parked.unwrap_or_else(|| RoomMemory {
            log: Box::new(MemoryLog {
                epoch: new_epoch(),
                seq: 0,
                replay: ReplayBuffer::new(self.replay_events, self.replay_bytes),
            }),
            history: VecDeque::new(),
        })
    }

    fn park(&self, key: &RoomKey, memory: RoomMemory) {
        self.parked
            .insert(key.clone(), Arc::new(Mutex::new(Some(memory))));
    }
}

/// Cluster mode: the local mirror of a room's shared log in `epoch`, bounded like a local
/// log; [`RoomLog::record`] fills it with the events the shared log numbered.
pub(super) fn mirror(epoch: String, cfg: &crate::config::RoomsConfig) -> Box<dyn RoomLog> {
    Box::new(MemoryLog {
        epoch,
        seq: 0,
        replay: ReplayBuffer::new(cfg.replay_events, cfg.replay_bytes),
    })
}

/// A random epoch: 64 bits, hex.
fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A room's log in memory: a counter and a bounded replay buffer.
struct MemoryLog {
    epoch: String,
    seq: u64,
    replay: ReplayBuffer,
}

impl RoomLog for MemoryLog {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn head(&self) -> u64 {
        self.seq
    }

    fn append(&mut self, kind: &'static str, encode: &mut dyn FnMut(u64) -> Arc<str>) -> Frame {
        self.seq += 1;
        let text = encode(self.seq);
        self.replay.push(self.seq, kind, text.clone());
        (self.seq, kind, text)
    }

    fn since(&self, last_seq: u64) -> Option<Vec<Frame>> {
        self.replay.since(last_seq, self.seq)
    }

    fn bytes(&self) -> usize {
        self.replay.bytes() + 64
    }

    fn record(&mut self, (seq, kind, text): Frame) {
        self.seq = seq;
        self.replay.push(seq, kind, text);
    }
}

/// What a retired room holds once its memory went to the backplane: nothing. Nobody can
/// join a retired room (the registry opens a new one), so it is never appended to.
pub(super) struct Retired;

impl RoomLog for Retired {
    fn epoch(&self) -> &str {
        ""
    }
    fn head(&self) -> u64 {
        0
    }
    fn append(&mut self, kind: &'static str, encode: &mut dyn FnMut(u64) -> Arc<str>) -> Frame {
        (0, kind, encode(0))
    }
    fn since(&self, _last_seq: u64) -> Option<Vec<Frame>> {
        None
    }
    fn bytes(&self) -> usize {
        0
    }
    fn record(&mut self, _frame: Frame) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomsConfig;

    fn key() -> RoomKey {
        RoomKey {
            tenant: "t".into(),
            name: "r".into(),
        }
    }

    fn backplane(events: usize) -> LocalBackplane {
        LocalBackplane::new(&RoomsConfig {
            replay_events: events,
            ..RoomsConfig::default()
        })
    }

    #[test]
    fn seqs_increase_and_the_tail_replays() {
        let mut l = backplane(3).open(&key()).log;
        for _ in 0..5 {
            l.append("delta", &mut |seq| Arc::from(format!("e{seq}").as_str()));
        }
        assert_eq!(l.head(), 5);
        let seqs: Vec<u64> = l.since(3).unwrap_or_default().iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert!(l.since(1).is_none(), "no longer held");
        assert!(l.since(6).is_none(), "from the future");
        assert_eq!(l.since(5).map(|v| v.len()), Some(0));
    }

    #[test]
    fn the_encoder_sees_the_seq_it_gets() {
        let mut l = backplane(10).open(&key()).log;
        let (seq, kind, text) = l.append("start", &mut |seq| Arc::from(seq.to_string().as_str()));
        assert_eq!((seq, kind, &*text), (1, "start", "1"));
    }

    #[test]
    fn a_parked_log_comes_back_once() {
        let b = backplane(10);
        let mut m = b.open(&key());
        m.log
            .append("delta", &mut |s| Arc::from(s.to_string().as_str()));
        let epoch = m.log.epoch().to_string();
        b.park(&key(), m);
        let back = b.open(&key()).log;
        assert_eq!(
            (back.head(), back.epoch()),
            (1, epoch.as_str()),
            "the parked log"
        );
        let fresh = b.open(&key()).log;
        assert_eq!(fresh.head(), 0, "taken: a new one");
        assert_ne!(fresh.epoch(), epoch, "with a new epoch");
    }
}
