//! A room's ordered event log: it assigns each room event its `seq` and keeps the tail for
//! clients that reconnect. This is the seam cluster mode plugs into: a shared log assigns
//! seqs for every replica and carries events to the others, while each replica keeps fanning
//! out to its own members. The in-process log keeps the tail in memory.

use std::sync::Arc;

use super::RoomKey;
use super::replay::ReplayBuffer;

/// One logged event: its seq, its type (a metric label) and its encoded bytes.
pub type Frame = (u64, &'static str, Arc<str>);

/// The log of one room. Called under the room's lock, so appends are ordered.
pub trait RoomLog: Send {
    /// The seq of the last event appended (0 before the first).
    fn head(&self) -> u64;
    /// Appends one event: `encode` is given the event's seq and returns its bytes.
    fn append(&mut self, kind: &'static str, encode: &mut dyn FnMut(u64) -> Arc<str>) -> Frame;
    /// The events after `last_seq`, or `None` when the log no longer holds them all (or
    /// `last_seq` is from the future): the client must resync.
    fn since(&self, last_seq: u64) -> Option<Vec<Frame>>;
}

/// Opens each room's log when the room is created.
pub trait Backplane: Send + Sync {
    fn open(&self, key: &RoomKey) -> Box<dyn RoomLog>;
}

/// Logs in this process's memory, bounded by events and bytes per room.
#[derive(Debug, Clone, Copy)]
pub struct LocalBackplane {
    pub replay_events: usize,
    pub replay_bytes: usize,
}

impl Backplane for LocalBackplane {
    fn open(&self, _key: &RoomKey) -> Box<dyn RoomLog> {
        Box::new(MemoryLog {
            seq: 0,
            replay: ReplayBuffer::new(self.replay_events, self.replay_bytes),
        })
    }
}

/// A room's log in memory: a counter and a bounded replay buffer.
struct MemoryLog {
    seq: u64,
    replay: ReplayBuffer,
}

impl RoomLog for MemoryLog {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(events: usize) -> Box<dyn RoomLog> {
        let key = RoomKey {
            tenant: "t".into(),
            name: "r".into(),
        };
        LocalBackplane {
            replay_events: events,
            replay_bytes: 1 << 20,
        }
        .open(&key)
    }

    #[test]
    fn seqs_increase_and_the_tail_replays() {
        let mut l = log(3);
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
        let mut l = log(10);
        let (seq, kind, text) = l.append("start", &mut |seq| Arc::from(seq.to_string().as_str()));
        assert_eq!((seq, kind, &*text), (1, "start", "1"));
    }
}
