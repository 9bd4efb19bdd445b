//! A circuit breaker per provider: error ratio over a rolling window with a minimum number of
//! requests → open for a cooldown → one half-open probe decides.
//!
//! Uses tokio's clock so tests can run it under paused time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ProviderEntry;

/// Where the breaker stands; exported as a metric (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    outcomes: VecDeque<(Instant, bool)>,
    open_until: Option<Instant>,
    probing: bool,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_metric(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Thread-safe; one per provider.
#[derive(Debug)]
pub struct CircuitBreaker {
    window: Duration,
    min_requests: usize,
    error_ratio: f64,
    cooldown: Duration,
    /// False for a breaker that never opens (the local extractive link's).
    trips: bool,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(entry: &ProviderEntry) -> Self {
        Self {
            window: Duration::from_millis(entry.breaker_window_ms),
            min_requests: entry.breaker_min_requests.max(1) as usize,
            error_ratio: entry.breaker_error_ratio,
            cooldown: Duration::from_millis(entry.breaker_cooldown_ms),
            trips: true,
            inner: Mutex::new(Inner {
                outcomes: VecDeque::new(),
                open_until: None,
                probing: false,
            }),
        }
    }

    /// A breaker that stays closed whatever happens: the link behind it is local and cannot
    /// be overloaded by retries, so the fallback loop needs no special case for it.
    pub fn never() -> Self {
        Self {
            trips: false,
            ..Self::new(&ProviderEntry::default())
        }
    }

    /// The state worth exporting as a metric; `None` for a breaker that never trips.
    pub fn exported_state(&self) -> Option<BreakerState> {
        self.trips.then(|| self.state())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an expired cooldown reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.open_until {
            None => BreakerState::Closed,
            Some(t) if Instant::now() < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go out now. In half-open state only one probe is let through
    /// until its outcome is recorded.
    pub fn try_acquire(&self) -> bool {
        let mut inner = self.lock();
        match inner.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if inner.probing => false,
            Some(_) => {
                inner.probing = true;
                true
            }
        }
    }

    /// Records an attempt's outcome; a failed probe reopens, a successful one closes.
    pub fn record(&self, success: bool) {
        if !self.trips {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.open_until.is_some() {
            if !inner.probing {
                return; // an attempt started before the breaker opened
            }
            inner.probing = false;
            if success {
                inner.open_until = None;
                inner.outcomes.clear();
            } else {
                inner.open_until = Some(now + self.cooldown);
            }
            return;
        }
        inner.outcomes.push_back((now, success));
        while inner
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            inner.outcomes.pop_front();
        }
        let total = inner.outcomes.len();
        let failures = inner.outcomes.iter().filter(|(_, ok)| !ok).count();
        if total >= self.min_requests && failures as f64 / total as f64 >= self.error_ratio {
            inner.open_until = Some(now + self.cooldown);
            inner.outcomes.clear();
        }
    }

    /// Undoes a `try_acquire` whose attempt never ran (e.g. the turn was cancelled first).
    pub fn release(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(&ProviderEntry {
            breaker_window_ms: 10_000,
            breaker_min_requests: 4,
            breaker_error_ratio: 0.5,
            breaker_cooldown_ms: 5_000,
            ..ProviderEntry::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_enough_failures_and_half_opens_after_cooldown() {
        let b = breaker();
        for _ in 0..3 {
            assert!(b.try_acquire());
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed, "below min_requests");
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire(), "open: requests are skipped");

        tokio::time::advance(Duration::from_millis(5_001)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "one probe");
        assert!(!b.try_acquire(), "only one probe at a time");
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open, "failed probe reopens");

        tokio::time::advance(Duration::from_millis(5_001)).await;
        assert!(b.try_acquire());
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed, "successful probe closes");
        assert!(b.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn a_never_breaker_stays_closed() {
        let b = CircuitBreaker::never();
        for _ in 0..100 {
            assert!(b.try_acquire());
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.exported_state().is_none());
        assert_eq!(breaker().exported_state(), Some(BreakerState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker();
        for _ in 0..3 {
            b.record(false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        b.record(false);
        b.record(true);
        b.record(true);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "only 1 of 3 recent attempts failed"
        );
    }
}
