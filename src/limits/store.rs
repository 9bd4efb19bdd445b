//! Where limit accounts live. Every change is one atomic step over a principal's tenant
//! and user accounts together ([`Take`]: check both, take from both or neither; [`Give`]:
//! return or settle), so a second store — one script per step in a shared engine — can
//! replace the in-process one without changing the limiter above it.
//!
//! The in-process store keeps one lock per tenant: its account and its users' accounts
//! change together, and tenants never wait for each other. Cluster mode's store
//! (`limits/shared.rs`) does each step in one Redis script.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::bucket::{Bucket, DayBudget, utc_day};
use super::{Estimate, Limit, LimitError, Usage};
use crate::auth::Principal;
use crate::config::{AuthConfig, LimitSet, LimitsConfig};

/// What a request takes from its tenant's and user's allowances.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    /// One request (HTTP call, WebSocket upgrade or prompt).
    Request,
    /// A WebSocket connection, held until given back.
    Connection,
    /// A turn slot, held until given back.
    Turn,
    /// A turn's worst case against tokens/min and USD/day.
    Reserve(Estimate),
}

/// What goes back when a held slot or a reservation ends.
#[derive(Debug, Clone, Copy)]
pub enum Give {
    Connection,
    Turn,
    /// The real usage of a turn that reserved `reserved`.
    Settle {
        reserved: Estimate,
        tokens: u64,
        usd: f64,
    },
}

/// A store's answer, later: the in-process store's is ready at once.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store knows a held slot or reservation by (a shared store renews its lease under
/// this id until it is given back); the in-process store needs none.
#[derive(Debug, Clone, Default)]
pub struct Held(pub Option<Arc<str>>);

/// The accounts of every tenant and user.
pub trait LimitStore: Send + Sync {
    /// Checks the tenant, then the user; takes from both only when both allow it.
    fn take<'a>(&'a self, p: &'a Principal, take: Take) -> Pending<'a, Result<Held, LimitError>>;
    /// Gives back what `held` holds; never waits (a shared store writes in the background).
    fn give(&self, p: &Principal, held: &Held, give: Give);
    /// The tenant's usage as it may see it.
    fn usage<'a>(&'a self, tenant: &'a str) -> Pending<'a, Usage>;
}

/// The limits that apply to each tenant and its users.
pub(super) struct Policy {
    defaults: LimitsConfig,
    tenants: HashMap<String, (LimitSet, LimitSet)>,
}

impl Policy {
    pub(super) fn new(auth: &AuthConfig, defaults: &LimitsConfig) -> Self {
        let tenants = auth
            .tenants
            .iter()
            .map(|(name, t)| {
                let limits = (
                    t.limits.over(defaults.tenant),
                    t.user_limits.over(defaults.user),
                );
                (name.clone(), limits)
            })
            .collect();
        Self {
            defaults: defaults.clone(),
            tenants,
        }
    }

    /// The tenant's usage from its counts — (settled USD today, reserved USD, tokens,
    /// turns, connections) — with the limits it may see.
    pub(super) fn usage(&self, tenant: &str, counts: (f64, f64, u64, u32, u32)) -> Usage {
        let (limits, _) = self.of(tenant);
        let (usd_today, usd_reserved, tokens_total, turns, conns) = counts;
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

    pub(super) fn of(&self, tenant: &str) -> (LimitSet, LimitSet) {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or((self.defaults.tenant, self.defaults.user))
    }
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

    /// Whether `take` fits; the refusal names the limit and when to retry.
    fn check(&mut self, take: Take, now: Instant) -> Result<(), (Limit, Option<Duration>)> {
        match take {
            Take::Request => match self.requests.as_mut().map(|b| b.check(1.0, now)) {
                Some(Err(wait)) => Err((Limit::Requests, wait)),
                _ => Ok(()),
            },
            Take::Connection => match self.limits.ws_connections {
                Some(max) if self.connections >= max => {
                    Err((Limit::Connections, Some(Duration::from_secs(5))))
                }
                _ => Ok(()),
            },
            Take::Turn => match self.limits.concurrent_turns {
                Some(max) if self.turns >= max => Err((Limit::Turns, Some(Duration::from_secs(1)))),
                _ => Ok(()),
            },
            Take::Reserve(est) => {
                if let Some(b) = self.tokens.as_mut() {
                    b.check(est.tokens as f64, now)
                        .map_err(|w| (Limit::Tokens, w))?;
                }
                if let Some(limit) = self.limits.usd_per_day {
                    self.day
                        .check(est.usd, limit, utc_day())
                        .map_err(|w| (Limit::Spend, w))?;
                }
                Ok(())
            }
        }
    }

    /// Takes what [`Account::check`] allowed.
    fn apply(&mut self, take: Take) {
        match take {
            Take::Request => {
                if let Some(b) = self.requests.as_mut() {
                    b.take(1.0);
                }
            }
            Take::Connection => self.connections += 1,
            Take::Turn => self.turns += 1,
            Take::Reserve(est) => {
                if let Some(b) = self.tokens.as_mut() {
                    b.take(est.tokens as f64);
                }
                self.day.reserve(est.usd);
            }
        }
    }

    fn give(&mut self, give: Give) {
        match give {
            Give::Connection => self.connections = self.connections.saturating_sub(1),
            Give::Turn => self.turns = self.turns.saturating_sub(1),
            Give::Settle {
                reserved,
                tokens,
                usd,
            } => {
                if let Some(b) = self.tokens.as_mut() {
                    if tokens <= reserved.tokens {
                        b.give((reserved.tokens - tokens) as f64);
                    } else {
                        b.take((tokens - reserved.tokens) as f64);
                    }
                }
                self.day.settle(reserved.usd, usd, utc_day());
                self.tokens_total = self.tokens_total.saturating_add(tokens);
            }
        }
    }
}

/// One tenant's account and its users', changed together under one lock.
struct TenantAccounts {
    tenant: Account,
    users: HashMap<Arc<str>, Account>,
    user_limits: LimitSet,
}

/// Accounts in this process's memory.
pub struct LocalLimits {
    policy: Policy,
    tenants: DashMap<Arc<str>, Arc<Mutex<TenantAccounts>>>,
}

impl LocalLimits {
    pub fn new(auth: &AuthConfig, defaults: &LimitsConfig) -> Self {
        Self {
            policy: Policy::new(auth, defaults),
            tenants: DashMap::new(),
        }
    }

    /// The tenant's accounts, created with its limits on first use.
    fn accounts(&self, tenant: &Arc<str>, now: Instant) -> Arc<Mutex<TenantAccounts>> {
        if let Some(a) = self.tenants.get(tenant) {
            return a.clone();
        }
        let entry = self.tenants.entry(tenant.clone()).or_insert_with(|| {
            let (tenant_limits, user_limits) = self.policy.of(tenant);
            Arc::new(Mutex::new(TenantAccounts {
                tenant: Account::new(tenant_limits, now),
                users: HashMap::new(),
                user_limits,
            }))
        });
        entry.clone()
    }
}

fn lock(m: &Mutex<TenantAccounts>) -> std::sync::MutexGuard<'_, TenantAccounts> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LimitStore for LocalLimits {
    fn take<'a>(&'a self, p: &'a Principal, take: Take) -> Pending<'a, Result<Held, LimitError>> {
        let taken = self.take_now(p, take).map(|()| Held::default());
        Box::pin(std::future::ready(taken))
    }

    fn give(&self, p: &Principal, _held: &Held, give: Give) {
        let Some(accounts) = self.tenants.get(&p.tenant).map(|a| a.clone()) else {
            return;
        };
        let mut g = lock(&accounts);
        g.tenant.give(give);
        if let Some(user) = g.users.get_mut(&p.user) {
            user.give(give);
        }
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> Pending<'a, Usage> {
        Box::pin(std::future::ready(self.usage_now(tenant)))
    }
}

impl LocalLimits {
    fn take_now(&self, p: &Principal, take: Take) -> Result<(), LimitError> {
        let now = Instant::now();
        let accounts = self.accounts(&p.tenant, now);
        let mut g = lock(&accounts);
        let TenantAccounts {
            tenant,
            users,
            user_limits,
        } = &mut *g;
        let user = users
            .entry(p.user.clone())
            .or_insert_with(|| Account::new(*user_limits, now));
        for (acct, scope) in [(&mut *tenant, "tenant"), (&mut *user, "user")] {
            if let Err((limit, retry_after)) = acct.check(take, now) {
                return Err(LimitError {
                    limit,
                    scope,
                    retry_after,
                    store_down: false,
                });
            }
        }
        tenant.apply(take);
        user.apply(take);
        Ok(())
    }

    fn usage_now(&self, tenant: &str) -> Usage {
        let accounts = self.tenants.get(tenant).map(|a| a.clone());
        let counts = match accounts {
            Some(a) => {
                let mut g = lock(&a);
                let t = &mut g.tenant;
                t.day.roll(utc_day());
                (
                    t.day.spent,
                    t.day.reserved,
                    t.tokens_total,
                    t.turns,
                    t.connections,
                )
            }
            None => (0.0, 0.0, 0, 0, 0),
        };
        self.policy.usage(tenant, counts)
    }
}
