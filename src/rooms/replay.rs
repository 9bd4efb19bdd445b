//! Per-room buffer of serialised events, so a reconnecting client gets exactly what it missed.

use std::collections::VecDeque;
use std::sync::Arc;

/// Bounded by event count and by bytes; the oldest events fall out first.
#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<(u64, &'static str, Arc<str>)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl ReplayBuffer {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    /// Bytes of the frames held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the event with sequence number `seq` (callers pass strictly increasing seqs).
    pub fn push(&mut self, seq: u64, kind: &'static str, frame: Arc<str>) {
        self.bytes += frame.len();
        self.events.push_back((seq, kind, frame));
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some((_, _, old)) = self.events.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// The frames after `last_seq`, or `None` when some of them are no longer held (or
    /// `last_seq` is from the future): the client must resync.
    pub fn since(
        &self,
        last_seq: u64,
        current_seq: u64,
    ) -> Option<Vec<(u64, &'static str, Arc<str>)>> {
        if last_seq > current_seq {
            return None;
        }
        if last_seq == current_seq {
            return Some(Vec::new());
        }
        let oldest = self.events.front().map(|(s, _, _)| *s)?;
        if last_seq + 1 < oldest {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|(s, _, _)| *s > last_seq)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64, max_events: usize, max_bytes: usize) -> ReplayBuffer {
        let mut b = ReplayBuffer::new(max_events, max_bytes);
        for s in 1..=n {
            b.push(s, "delta", Arc::from(format!("e{s}").as_str()));
        }
        b
    }

    #[test]
    fn replays_exactly_the_missed_events() {
        let b = filled(10, 100, 1 << 20);
        let got: Vec<u64> = b
            .since(7, 10)
            .unwrap_or_default()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(got, vec![8, 9, 10]);
        assert_eq!(b.since(10, 10).map(|v| v.len()), Some(0));
        assert!(b.since(11, 10).is_none());
    }

    #[test]
    fn too_old_needs_resync() {
        let b = filled(10, 4, 1 << 20);
        assert!(b.since(5, 10).is_none());
        assert_eq!(b.since(6, 10).map(|v| v.len()), Some(4));
    }

    #[test]
    fn byte_bound_evicts() {
        let b = filled(10, 100, 9);
        assert!(b.bytes <= 9);
        assert!(b.since(0, 10).is_none());
    }
}
