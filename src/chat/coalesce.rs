//! Delta coalescing (`rooms.coalesce_ms`): upstream pieces that come within the window of the
//! last delta sent are held and go out as one delta when the window closes. Every member then
//! gets fewer frames (fewer events to number, log and write) and the text is the same: the
//! held pieces are concatenated in order.
//!
//! The first piece after a quiet window goes at once, so a turn's first token and a slow
//! model's tokens are never delayed; only a stream faster than one delta per window is.
//! Anything that must not overtake the text (a tool call, the end of an attempt) takes what
//! is held first.

use std::time::Duration;

use tokio::time::Instant;

/// Held text and when the last delta went out.
#[derive(Debug, Default)]
pub struct Coalescer {
    window: Duration,
    held: String,
    last_sent: Option<Instant>,
}

impl Coalescer {
    /// The window of the sink the turn streams to (zero: every piece goes at once).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// A piece of released text; returns what to send now, if anything.
    pub fn push(&mut self, text: String, now: Instant) -> Option<String> {
        if self.window.is_zero() {
            return Some(text);
        }
        if self.held.is_empty() {
            if self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.window)
            {
                self.last_sent = Some(now);
                return Some(text);
            }
            self.held = text;
            return None;
        }
        self.held.push_str(&text);
        // The stream kept the engine busy past the window: the held text is due now.
        if self.due().is_some_and(|due| now >= due) {
            return self.take(now);
        }
        None
    }

    /// When the held text is due, if some is held.
    pub fn due(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        self.last_sent.map(|t| t + self.window)
    }

    /// Takes what is held (its window closed, or something must not overtake it).
    pub fn take(&mut self, now: Instant) -> Option<String> {
        if self.held.is_empty() {
            return None;
        }
        self.last_sent = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn without_a_window_every_piece_goes_at_once() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        assert_eq!(c.push("a".into(), t0).as_deref(), Some("a"));
        assert_eq!(c.push("b".into(), t0).as_deref(), Some("b"));
        assert_eq!(c.due(), None);
    }

    #[test]
    fn pieces_within_the_window_are_held_and_concatenated_in_order() {
        let mut c = Coalescer::default();
        c.set_window(Duration::from_millis(50));
        let t0 = Instant::now();
        // The first piece after a quiet window is not delayed.
        assert_eq!(c.push("Hel".into(), t0).as_deref(), Some("Hel"));
        assert_eq!(c.push("lo".into(), at(t0, 10)), None);
        assert_eq!(c.push(", wor".into(), at(t0, 20)), None);
        assert_eq!(c.due(), Some(at(t0, 50)));
        assert_eq!(c.take(at(t0, 50)).as_deref(), Some("lo, wor"));
        assert_eq!(c.due(), None);
        // The next window counts from that delta.
        assert_eq!(c.push("ld".into(), at(t0, 60)), None);
        assert_eq!(c.due(), Some(at(t0, 100)));
    }

    #[test]
    fn a_piece_past_the_due_time_releases_everything_held() {
        let mut c = Coalescer::default();
        c.set_window(Duration::from_millis(50));
        let t0 = Instant::now();
        assert!(c.push("a".into(), t0).is_some());
        assert_eq!(c.push("b".into(), at(t0, 10)), None);
        assert_eq!(c.push("c".into(), at(t0, 70)).as_deref(), Some("bc"));
        assert_eq!(c.take(at(t0, 71)), None);
    }

    #[test]
    fn a_slow_stream_is_never_held() {
        let mut c = Coalescer::default();
        c.set_window(Duration::from_millis(50));
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(c.push(format!("{i}"), at(t0, i * 60)).is_some());
        }
    }
}
