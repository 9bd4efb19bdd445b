//! Per-tenant and per-user limits: requests per minute, concurrent turns, WebSocket
//! connections, tokens per minute and USD per day.
//!
//! Token and cost budgets hold under concurrency because a turn *reserves* its worst case
//! (prompt estimate plus the provider's `max_tokens`, summed over every link it may try) before
//! the upstream call, under the same lock that checks the budget, and *settles* with the real
//! usage afterwards. Concurrent turns therefore see each other's reservations: the sum of
//! what they may spend never passes the budget, however many start at once.
//!
//! The accounts sit behind [`LimitStore`]; this process's store is [`LocalLimits`], cluster
//! mode's is [`SharedLimits`] (Redis: the limits hold for the whole cluster).

mod bucket;
mod shared;
mod store;

use std::sync::Arc;
use std::time::Duration;

pub use self::shared::SharedLimits;
pub use self::store::{Give, Held, LimitStore, LocalLimits, Pending, Take};
use crate::auth::Principal;
use crate::config::{AuthConfig, LimitsConfig};

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
#[error("{}", describe(self))]
pub struct LimitError {
    pub limit: Limit,
    /// "tenant" or "user".
    pub scope: &'static str,
    pub retry_after: Option<Duration>,
    /// Cluster mode: the shared store could not be asked, so nothing that spends (a turn,
    /// a reservation) is allowed until it answers again.
    pub store_down: bool,
}

fn describe(e: &LimitError) -> String {
    if e.store_down {
        return format!(
            "the cluster store that keeps {} limits cannot be reached; retry shortly",
            e.limit.as_str()
        );
    }
    format!(
        "{} limit of this {} reached{}",
        e.limit.as_str(),
        e.scope,
        hint(e.retry_after)
    )
}

impl From<&LimitError> for crate::error::ErrorCode {
    fn from(e: &LimitError) -> Self {
        if e.store_down {
            crate::error::ErrorCode::ClusterUnavailable
        } else {
            crate::error::ErrorCode::RateLimited
        }
    }
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

/// Checks and books every limit; refusals are counted in the metrics.
pub struct Limiter {
    default_output_tokens: u64,
    store: Box<dyn LimitStore>,
}

impl Limiter {
    /// With this process's own accounts.
    pub fn new(auth: &AuthConfig, defaults: &LimitsConfig) -> Arc<Self> {
        Self::with_store(defaults, Box::new(LocalLimits::new(auth, defaults)))
    }

    pub fn with_store(defaults: &LimitsConfig, store: Box<dyn LimitStore>) -> Arc<Self> {
        Arc::new(Self {
            default_output_tokens: defaults.default_output_tokens.into(),
            store,
        })
    }

    /// Completion tokens reserved for a provider that sets no `max_tokens`.
    pub fn default_output_tokens(&self) -> u64 {
        self.default_output_tokens
    }

    async fn take(&self, p: &Principal, take: Take) -> Result<Held, LimitError> {
        self.store.take(p, take).await.inspect_err(|e| {
            // A store that cannot be asked limited nobody: that is the cluster's metrics.
            if !e.store_down {
                crate::metrics::rate_limited(&p.tenant, e.limit.as_str(), e.scope);
            }
        })
    }

    /// One request (HTTP call, WebSocket upgrade or prompt).
    pub async fn request(&self, p: &Principal) -> Result<(), LimitError> {
        self.take(p, Take::Request).await.map(|_| ())
    }

    /// A WebSocket connection, counted until the permit drops.
    pub async fn connect(self: &Arc<Self>, p: &Principal) -> Result<Permit, LimitError> {
        let held = self.take(p, Take::Connection).await?;
        Ok(self.permit(p, held, Give::Connection))
    }

    /// A turn, counted (queued or running) until the permit drops.
    pub async fn turn(self: &Arc<Self>, p: &Principal) -> Result<Permit, LimitError> {
        let held = self.take(p, Take::Turn).await?;
        Ok(self.permit(p, held, Give::Turn))
    }

    fn permit(self: &Arc<Self>, p: &Principal, held: Held, give: Give) -> Permit {
        Permit {
            limiter: self.clone(),
            principal: p.clone(),
            held,
            give,
        }
    }

    /// Reserves a turn's worst case against tokens/min and USD/day.
    pub async fn reserve(
        self: &Arc<Self>,
        p: &Principal,
        est: Estimate,
    ) -> Result<Reservation, LimitError> {
        let held = self.take(p, Take::Reserve(est)).await?;
        Ok(Reservation {
            limiter: self.clone(),
            principal: p.clone(),
            held,
            est,
            settled: false,
        })
    }

    fn settle(&self, p: &Principal, held: &Held, reserved: Estimate, tokens: u64, usd: f64) {
        let give = Give::Settle {
            reserved,
            tokens,
            usd,
        };
        self.store.give(p, held, give);
        crate::metrics::tenant_usage(&p.tenant, tokens, usd);
    }

    /// The tenant's usage as it may see it.
    pub async fn usage(&self, tenant: &str) -> Usage {
        self.store.usage(tenant).await
    }
}

/// A held connection or turn slot; released on drop, however the holder ends.
pub struct Permit {
    limiter: Arc<Limiter>,
    principal: Principal,
    held: Held,
    give: Give,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({:?}, {})", self.give, self.principal.tenant)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter
            .store
            .give(&self.principal, &self.held, self.give);
    }
}

/// A turn's reserved worst case. [`Reservation::settle`] books the real usage; dropped
/// unsettled (the turn never reached an upstream), the whole reservation is returned.
pub struct Reservation {
    limiter: Arc<Limiter>,
    principal: Principal,
    held: Held,
    est: Estimate,
    settled: bool,
}

impl Reservation {
    pub fn settle(mut self, tokens: u64, usd: f64) {
        self.settled = true;
        let (p, held) = (&self.principal, &self.held);
        self.limiter.settle(p, held, self.est, tokens, usd);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let (p, held) = (&self.principal, &self.held);
            self.limiter.settle(p, held, self.est, 0, 0.0);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{LimitSet, TenantConfig};

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

    #[tokio::test]
    async fn user_limit_refuses_without_spending_the_tenants() {
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
        assert!(l.request(&who("a")).await.is_ok());
        assert!(l.request(&who("a")).await.is_ok());
        let e = l.request(&who("a")).await.unwrap_err();
        assert_eq!((e.limit, e.scope), (Limit::Requests, "user"));
        assert!(e.retry_after.is_some());
        assert!(
            l.request(&who("b")).await.is_ok(),
            "user a's refusal took nothing"
        );
        let e = l.request(&who("b")).await.unwrap_err();
        assert_eq!(e.scope, "tenant");
    }

    #[test]
    fn every_limit_has_its_own_metric_label() {
        let labels: std::collections::HashSet<_> = Limit::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(labels.len(), Limit::ALL.len());
    }

    #[tokio::test]
    async fn permits_release_on_drop() {
        let l = limiter(
            LimitSet {
                concurrent_turns: Some(1),
                ..LimitSet::default()
            },
            LimitSet::default(),
        );
        let p = l.turn(&who("a")).await.unwrap();
        assert_eq!(l.turn(&who("b")).await.unwrap_err().limit, Limit::Turns);
        drop(p);
        assert!(l.turn(&who("b")).await.is_ok());
    }

    #[tokio::test]
    async fn reservations_hold_the_budget_until_settled() {
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
        let r1 = l.reserve(&who("a"), est).await.unwrap();
        let r2 = l.reserve(&who("a"), est).await.unwrap();
        assert_eq!(
            l.reserve(&who("a"), est).await.err().map(|e| e.limit),
            Some(Limit::Spend)
        );
        r1.settle(50, 0.1);
        drop(r2); // never reached an upstream: returned whole
        let u = l.usage("acme").await;
        assert!(
            (u.usd_today - 0.1).abs() < 1e-9 && u.usd_reserved.abs() < 1e-9,
            "{u:?}"
        );
        assert_eq!(u.tokens_total, 50);
    }
}
