//! Per-tenant and per-user limits: requests per minute, concurrent turns, WebSocket
//! connections, tokens per minute and USD per day.
//!
//! Token and cost budgets hold under concurrency because a turn *reserves* its worst case
//! (prompt estimate plus the provider's `max_tokens`, at the dearest link it may use) before
//! the upstream call, under the same lock that checks the budget, and *settles* with the real
//! usage afterwards. Concurrent turns therefore see each other's reservations: the sum of
//! what they may spend never passes the budget, however many start at once.

mod bucket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::bucket::{Bucket, DayBudget, utc_day};
use crate::auth::Principal;
use crate::config::{AuthConfig, LimitSet, LimitsConfig};

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Turns,
    Connections,
    Tokens,
    Spend,
}

impl Limit {
    /// Every limit (the metric's label values come from here).
    pub const ALL: [Limit; 5] = [
        Limit::Requests,
        Limit::Turns,
        Limit::Connections,
        Limit::Tokens,
        Limit::Spend,
    ];

    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests_per_min",
            Limit::Turns => "concurrent_turns",
            Limit::Connections => "ws_connections",
            Limit::Tokens => "tokens_per_min",
            Limit::Spend => "usd_per_day",
        }
    }
}

/// A refusal: which limit, whose, and when to retry (`None`: this request can never fit).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} limit of this {scope} reached{}", limit.as_str(), hint(*retry_after))]
pub struct LimitError {
    pub limit: Limit,
    /// "tenant" or "user".
    pub scope: &'static str,
    pub retry_after: Option<Duration>,
}

impl LimitError {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| (d.as_secs_f64().ceil() as u64).max(1))
    }
}

fn hint(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("; retry in {} s", d.as_secs_f64().ceil() as u64),
        None => "; this request is larger than the whole allowance".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Tenant(Arc<str>),
    User(Arc<str>, Arc<str>),
}

/// The live state of one tenant or user.
#[derive(Debug)]
struct Account {
    limits: LimitSet,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    turns: u32,
    connections: u32,
    day: DayBudget,
    tokens_total: u64,
}

impl Account {
    fn new(limits: LimitSet, now: Instant) -> Self {
        Self {
            limits,
            requests: limits.requests_per_min.map(|n| Bucket::new(n.into(), now)),
            tokens: limits.tokens_per_min.map(|n| Bucket::new(n, now)),
            turns: 0,
            connections: 0,
            day: DayBudget {
                day: utc_day(),
                ..DayBudget::default()
            },
            tokens_total: 0,
        }
    }
}

/// What a turn may cost at most, reserved before the upstream call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub tokens: u64,
    pub usd: f64,
}

/// A tenant's own view of its usage (`GET /v1/usage`).
/// Unset limits are left out.
#[derive(Debug, Clone, poem_openapi::Object)]
#[oai(rename = "TenantUsage", skip_serializing_if_is_none)]
pub struct Usage {
    pub tenant: String,
    /// Settled upstream spend of the current UTC day.
    pub usd_today: f64,
    /// Reserved by turns still running.
    pub usd_reserved: f64,
    pub usd_per_day: Option<f64>,
    /// Upstream tokens settled since the server started.
    pub tokens_total: u64,
    pub tokens_per_min: Option<u64>,
    pub concurrent_turns: u32,
    pub ws_connections: u32,
}

/// All accounts, behind one lock: every check-and-take spans the tenant and the user
/// atomically, and each operation is a handful of arithmetic steps.
pub struct Limiter {
    defaults: LimitsConfig,
    tenants: HashMap<String, (LimitSet, LimitSet)>,
    accounts: Mutex<HashMap<Key, Account>>,
}

type Guarded<'a> = std::sync::MutexGuard<'a, HashMap<Key, Account>>;

impl Limiter {
    pub fn new(auth: &AuthConfig, defaults: &LimitsConfig) -> Arc<Self> {
        let tenants = auth
            .tenants
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    (
                        t.limits.over(defaults.tenant),
                        t.user_limits.over(defaults.user),
                    ),
                )
            })
            .collect();
        Arc::new(Self {
            defaults: defaults.clone(),
            tenants,
            accounts: Mutex::new(HashMap::new()),
        })
    }

    /// Completion tokens reserved for a provider that sets no `max_tokens`.
    pub fn default_output_tokens(&self) -> u64 {
        self.defaults.default_output_tokens.into()
    }

    fn limits_of(&self, key: &Key) -> LimitSet {
        let (tenant, user) = match key {
            Key::Tenant(t) => (t, false),
            Key::User(t, _) => (t, true),
        };
        match (self.tenants.get(&**tenant), user) {
            (Some((t, _)), false) => *t,
            (Some((_, u)), true) => *u,
            (None, false) => self.defaults.tenant,
            (None, true) => self.defaults.user,
        }
    }

    fn lock(&self) -> Guarded<'_> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(p: &Principal) -> [(Key, &'static str); 2] {
        [
            (Key::Tenant(p.tenant.clone()), "tenant"),
            (Key::User(p.tenant.clone(), p.user.clone()), "user"),
        ]
    }

    /// Runs `check` on the tenant and the user; if both pass, `take` on both.
    fn both(
        &self,
        p: &Principal,
        check: impl Fn(&mut Account, Instant) -> Result<(), (Limit, Option<Duration>)>,
        take: impl Fn(&mut Account),
    ) -> Result<(), LimitError> {
        let now = Instant::now();
        let mut m = self.lock();
        for (key, scope) in Self::keys(p) {
            let acct = m
                .entry(key.clone())
                .or_insert_with(|| Account::new(self.limits_of(&key), now));
            if let Err((limit, retry_after)) = check(acct, now) {
                crate::metrics::rate_limited(&p.tenant, limit.as_str(), scope);
                return Err(LimitError {
                    limit,
                    scope,
                    retry_after,
                });
            }
        }
        for (key, _) in Self::keys(p) {
            if let Some(acct) = m.get_mut(&key) {
                take(acct);
            }
        }
        Ok(())
    }

    /// One request (HTTP call, WebSocket upgrade or prompt).
    pub fn request(&self, p: &Principal) -> Result<(), LimitError> {
        self.both(
            p,
            |a, now| match a.requests.as_mut().map(|b| b.check(1.0, now)) {
                Some(Err(wait)) => Err((Limit::Requests, wait)),
                _ => Ok(()),
            },
            |a| {
                if let Some(b) = a.requests.as_mut() {
                    b.take(1.0);
                }
            },
        )
    }

    /// A WebSocket connection, counted until the permit drops.
    pub fn connect(self: &Arc<Self>, p: &Principal) -> Result<Permit, LimitError> {
        self.both(
            p,
            |a, _| match a.limits.ws_connections {
                Some(max) if a.connections >= max => {
                    Err((Limit::Connections, Some(Duration::from_secs(5))))
                }
                _ => Ok(()),
            },
            |a| a.connections += 1,
        )?;
        Ok(Permit {
            limiter: self.clone(),
            principal: p.clone(),
            kind: Limit::Connections,
        })
    }

    /// A turn, counted (queued or running) until the permit drops.
    pub fn turn(self: &Arc<Self>, p: &Principal) -> Result<Permit, LimitError> {
        self.both(
            p,
            |a, _| match a.limits.concurrent_turns {
                Some(max) if a.turns >= max => Err((Limit::Turns, Some(Duration::from_secs(1)))),
                _ => Ok(()),
            },
            |a| a.turns += 1,
        )?;
        Ok(Permit {
            limiter: self.clone(),
            principal: p.clone(),
            kind: Limit::Turns,
        })
    }

    /// Reserves a turn's worst case against tokens/min and USD/day.
    pub fn reserve(
        self: &Arc<Self>,
        p: &Principal,
        est: Estimate,
    ) -> Result<Reservation, LimitError> {
        let today = utc_day();
        self.both(
            p,
            |a, now| {
                if let Some(b) = a.tokens.as_mut() {
                    b.check(est.tokens as f64, now)
                        .map_err(|w| (Limit::Tokens, w))?;
                }
                if let Some(limit) = a.limits.usd_per_day {
                    a.day
                        .check(est.usd, limit, today)
                        .map_err(|w| (Limit::Spend, w))?;
                }
                Ok(())
            },
            |a| {
                if let Some(b) = a.tokens.as_mut() {
                    b.take(est.tokens as f64);
                }
                a.day.reserve(est.usd);
            },
        )?;
        Ok(Reservation {
            limiter: self.clone(),
            principal: p.clone(),
            est,
            settled: false,
        })
    }

    fn settle(&self, p: &Principal, est: Estimate, tokens: u64, usd: f64) {
        let today = utc_day();
        let mut m = self.lock();
        for (key, _) in Self::keys(p) {
            if let Some(a) = m.get_mut(&key) {
                if let Some(b) = a.tokens.as_mut() {
                    if tokens <= est.tokens {
                        b.give((est.tokens - tokens) as f64);
                    } else {
                        b.take((tokens - est.tokens) as f64);
                    }
                }
                a.day.settle(est.usd, usd, today);
                a.tokens_total += tokens;
            }
        }
        drop(m);
        crate::metrics::tenant_usage(&p.tenant, tokens, usd);
    }

    fn release(&self, p: &Principal, kind: Limit) {
        let mut m = self.lock();
        for (key, _) in Self::keys(p) {
            if let Some(a) = m.get_mut(&key) {
                match kind {
                    Limit::Turns => a.turns = a.turns.saturating_sub(1),
                    Limit::Connections => a.connections = a.connections.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }

    /// The tenant's usage as it may see it.
    pub fn usage(&self, tenant: &str) -> Usage {
        let key = Key::Tenant(Arc::from(tenant));
        let limits = self.limits_of(&key);
        let mut m = self.lock();
        let today = utc_day();
        let (usd_today, usd_reserved, tokens_total, turns, conns) = match m.get_mut(&key) {
            Some(a) => {
                a.day.roll(today);
                (
                    a.day.spent,
                    a.day.reserved,
                    a.tokens_total,
                    a.turns,
                    a.connections,
                )
            }
            None => (0.0, 0.0, 0, 0, 0),
        };
        Usage {
            tenant: tenant.to_string(),
            usd_today,
            usd_reserved,
            usd_per_day: limits.usd_per_day,
            tokens_total,
            tokens_per_min: limits.tokens_per_min,
            concurrent_turns: turns,
            ws_connections: conns,
        }
    }
}

/// A held connection or turn slot; released on drop, however the holder ends.
pub struct Permit {
    limiter: Arc<Limiter>,
    principal: Principal,
    kind: Limit,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Permit({}, {})",
            self.kind.as_str(),
            self.principal.tenant
        )
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(&self.principal, self.kind);
    }
}

/// A turn's reserved worst case. [`Reservation::settle`] books the real usage; dropped
/// unsettled (the turn never reached an upstream), the whole reservation is returned.
pub struct Reservation {
    limiter: Arc<Limiter>,
    principal: Principal,
    est: Estimate,
    settled: bool,
}

impl Reservation {
    pub fn settle(mut self, tokens: u64, usd: f64) {
        self.settled = true;
        self.limiter.settle(&self.principal, self.est, tokens, usd);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(&self.principal, self.est, 0, 0.0);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::TenantConfig;

    fn limiter(tenant: LimitSet, user: LimitSet) -> Arc<Limiter> {
        let mut auth = AuthConfig::default();
        auth.tenants.insert(
            "acme".into(),
            TenantConfig {
                limits: tenant,
                user_limits: user,
                ..TenantConfig::default()
            },
        );
        Limiter::new(&auth, &LimitsConfig::default())
    }

    fn who(user: &str) -> Principal {
        Principal {
            tenant: Arc::from("acme"),
            user: Arc::from(user),
        }
    }

    #[test]
    fn user_limit_refuses_without_spending_the_tenants() {
        let l = limiter(
            LimitSet {
                requests_per_min: Some(3),
                ..LimitSet::default()
            },
            LimitSet {
                requests_per_min: Some(2),
                ..LimitSet::default()
            },
        );
        assert!(l.request(&who("a")).is_ok());
        assert!(l.request(&who("a")).is_ok());
        let e = l.request(&who("a")).unwrap_err();
        assert_eq!((e.limit, e.scope), (Limit::Requests, "user"));
        assert!(e.retry_after.is_some());
        assert!(
            l.request(&who("b")).is_ok(),
            "user a's refusal took nothing"
        );
        let e = l.request(&who("b")).unwrap_err();
        assert_eq!(e.scope, "tenant");
    }

    #[test]
    fn every_limit_has_its_own_metric_label() {
        let labels: std::collections::HashSet<_> = Limit::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(labels.len(), Limit::ALL.len());
    }

    #[test]
    fn permits_release_on_drop() {
        let l = limiter(
            LimitSet {
                concurrent_turns: Some(1),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let p = l.turn(&who("a")).unwrap();
        assert_eq!(l.turn(&who("b")).unwrap_err().limit, Limit::Turns);
        drop(p);
        assert!(l.turn(&who("b")).is_ok());
    }

    #[test]
    fn reservations_hold_the_budget_until_settled() {
        let l = limiter(
            LimitSet {
                usd_per_day: Some(1.0),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let est = Estimate {
            tokens: 100,
            usd: 0.4,
        };
        let r1 = l.reserve(&who("a"), est).unwrap();
        let r2 = l.reserve(&who("a"), est).unwrap();
        assert_eq!(
            l.reserve(&who("a"), est).err().map(|e| e.limit),
            Some(Limit::Spend)
        );
        r1.settle(50, 0.1);
        drop(r2); // never reached an upstream: returned whole
        let u = l.usage("acme");
        assert!(
            (u.usd_today - 0.1).abs() < 1e-9 && u.usd_reserved.abs() < 1e-9,
            "{u:?}"
        );
        assert_eq!(u.tokens_total, 50);
    }
}
