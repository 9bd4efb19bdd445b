//! A sliding one-minute window, per connection: how many rooms it may open.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

pub struct PerMinute {
    max: usize,
    times: VecDeque<Instant>,
}

impl PerMinute {
    pub fn new(max: u32) -> Self {
        Self {
            max: max as usize,
            times: VecDeque::new(),
        }
    }

    /// Counts one at `now`; `Err` with the wait when `max` were counted in the last minute.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.times.pop_front();
        }
        if self.times.len() >= self.max {
            let oldest = self.times.front().copied().unwrap_or(now);
            return Err(WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        self.times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut r = PerMinute::new(2);
        assert!(r.take(t0).is_ok());
        assert!(r.take(t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            r.take(t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert!(
            r.take(t0 + Duration::from_secs(61)).is_ok(),
            "the first fell out"
        );
    }
}
