//! A token bucket per minute, and a daily USD budget with reservations.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Refills `per_min` units a minute, continuously; holds at most `per_min`. The level may go
/// below zero when usage settles above its reservation: that debt is paid by later refills.
#[derive(Debug)]
pub struct Bucket {
    per_min: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(per_min: u64, now: Instant) -> Self {
        Self {
            per_min: per_min as f64,
            level: per_min as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * self.per_min / 60.0).min(self.per_min);
        self.at = now;
    }

    /// `Ok` if `n` units are there now; else how long until they will be (`None`: never,
    /// `n` is over the whole minute's allowance).
    pub fn check(&mut self, n: f64, now: Instant) -> Result<(), Option<Duration>> {
        self.refill(now);
        if n > self.per_min {
            return Err(None);
        }
        if self.level >= n {
            return Ok(());
        }
        let secs = (n - self.level) * 60.0 / self.per_min;
        Err(Some(Duration::from_secs_f64(secs.max(0.001))))
    }

    /// Takes `n` (after a successful [`Bucket::check`], or to settle a debt).
    pub fn take(&mut self, n: f64) {
        self.level -= n;
    }

    /// Returns `n` (an unused reservation).
    pub fn give(&mut self, n: f64) {
        self.level = (self.level + n).min(self.per_min);
    }
}

/// Days since the Unix epoch, UTC.
pub fn utc_day() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// Time until the next UTC midnight.
pub fn until_midnight() -> Duration {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Duration::from_secs(86_400 - secs % 86_400)
}

/// Spend of one UTC day: settled spend plus reservations of turns still running.
#[derive(Debug, Default)]
pub struct DayBudget {
    pub day: u64,
    pub spent: f64,
    pub reserved: f64,
}

impl DayBudget {
    /// Starts a new day's spend when `today` is a new day.
    pub fn roll(&mut self, today: u64) {
        if self.day != today {
            self.day = today;
            self.spent = 0.0;
        }
    }

    /// Whether `est` more fits under `limit`; the error is when to try again.
    pub fn check(&mut self, est: f64, limit: f64, today: u64) -> Result<(), Option<Duration>> {
        self.roll(today);
        if est > limit {
            return Err(None);
        }
        if self.spent + self.reserved + est <= limit {
            return Ok(());
        }
        // Running turns may settle below their estimates and free room soon; otherwise
        // the budget is spent until midnight.
        if self.spent + est <= limit && self.reserved > 0.0 {
            Err(Some(Duration::from_secs(2)))
        } else {
            Err(Some(until_midnight()))
        }
    }

    pub fn reserve(&mut self, est: f64) {
        self.reserved += est;
    }

    pub fn settle(&mut self, est: f64, actual: f64, today: u64) {
        self.roll(today);
        self.reserved = (self.reserved - est).max(0.0);
        self.spent += actual.max(0.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_over_the_minute_and_names_the_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, t0);
        assert!(b.check(60.0, t0).is_ok());
        b.take(60.0);
        let wait = b.check(1.0, t0).err().flatten().unwrap();
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        assert!(b.check(1.0, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(b.check(61.0, t0), Err(None));
    }

    #[test]
    fn day_budget_counts_reservations() {
        let mut d = DayBudget::default();
        assert!(d.check(0.4, 1.0, 7).is_ok());
        d.reserve(0.4);
        assert!(d.check(0.4, 1.0, 7).is_ok());
        d.reserve(0.4);
        assert!(d.check(0.4, 1.0, 7).is_err());
        d.settle(0.4, 0.1, 7);
        assert!(d.check(0.4, 1.0, 7).is_ok());
        d.settle(0.4, 0.5, 7);
        assert!((d.spent - 0.6).abs() < 1e-9);
        assert!(d.check(0.5, 1.0, 8).is_ok(), "a new day starts empty");
    }
}
