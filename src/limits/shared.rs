//! Cluster mode's limit store: every account in Redis, one script per step
//! (`cluster/limits.rs`), so requests/min, concurrent turns, connections, tokens/min and
//! USD/day hold for the whole cluster, not per node. Slots and reservations carry an id and
//! a lease this node renews; a node that dies gives them back when the lease runs out.
//!
//! While Redis cannot be asked, what spends nothing (requests, connections) is let through
//! uncounted, and what may spend (turns, reservations) is refused with
//! `cluster_unavailable`: a budget is never passed because the store was away.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::{Held, Pending, Policy};
use super::{Estimate, Give, Limit, LimitError, LimitStore, Take, Usage};
use crate::auth::Principal;
use crate::cluster::Cluster;
use crate::config::{AuthConfig, LimitSet, LimitsConfig};

/// Accounts shared by every node.
pub struct SharedLimits {
    cluster: Arc<Cluster>,
    policy: Policy,
    /// What this node holds, by id: renewed until given back.
    held: Arc<DashMap<Arc<str>, (Principal, &'static str)>>,
}

impl SharedLimits {
    /// The store, renewing this node's leases until `stop`.
    pub fn start(
        cluster: Arc<Cluster>,
        auth: &AuthConfig,
        defaults: &LimitsConfig,
        stop: CancellationToken,
    ) -> Self {
        let held = Arc::new(DashMap::new());
        tokio::spawn(renew(cluster.clone(), Arc::downgrade(&held), stop));
        Self {
            cluster,
            policy: Policy::new(auth, defaults),
            held,
        }
    }

    async fn take_shared(&self, p: &Principal, take: Take) -> Result<Held, LimitError> {
        let limits = self.policy.of(&p.tenant);
        let (kind, estimate) = match take {
            // Nothing to count where no one limits requests.
            Take::Request if !limits_requests(&limits) => return Ok(Held::default()),
            Take::Request => ("request", (0, 0.0)),
            Take::Connection => ("connection", (0, 0.0)),
            Take::Turn => ("turn", (0, 0.0)),
            Take::Reserve(Estimate { tokens, usd }) => ("reserve", (tokens, usd)),
        };
        // Only what is held until given back needs an id.
        let id: Arc<str> = match take {
            Take::Request => Arc::from(""),
            _ => Arc::from(Uuid::new_v4().simple().to_string()),
        };
        let keys = self.cluster.limit_keys(&p.tenant, &p.user);
        let limits = (&limits.0, &limits.1);
        match self
            .cluster
            .limit_take(&keys, kind, &id, estimate, limits)
            .await
        {
            Ok(None) if kind == "request" => Ok(Held::default()),
            Ok(None) => {
                self.held.insert(id.clone(), (p.clone(), kind));
                Ok(Held(Some(id)))
            }
            Ok(Some((limit, wait, scope))) => Err(LimitError {
                limit: limit_of(&limit),
                scope: if scope == "user" { "user" } else { "tenant" },
                retry_after: wait.map(Duration::from_millis),
                store_down: false,
            }),
            Err(e) => {
                crate::metrics::cluster_error("limits");
                tracing::warn!(error = %e, "limit store unreachable");
                store_down(take)
            }
        }
    }
}

/// What a call does while the store is away: requests and connections pass uncounted,
/// turns and reservations are refused.
fn store_down(take: Take) -> Result<Held, LimitError> {
    let limit = match take {
        Take::Request | Take::Connection => return Ok(Held::default()),
        Take::Turn => Limit::Turns,
        Take::Reserve(_) => Limit::Spend,
    };
    Err(LimitError {
        limit,
        scope: "tenant",
        retry_after: Some(Duration::from_secs(1)),
        store_down: true,
    })
}

fn limits_requests(limits: &(LimitSet, LimitSet)) -> bool {
    limits.0.requests_per_min.is_some() || limits.1.requests_per_min.is_some()
}

fn limit_of(name: &str) -> Limit {
    Limit::ALL
        .into_iter()
        .find(|l| l.as_str() == name)
        .unwrap_or(Limit::Requests)
}

impl LimitStore for SharedLimits {
    fn take<'a>(&'a self, p: &'a Principal, take: Take) -> Pending<'a, Result<Held, LimitError>> {
        Box::pin(self.take_shared(p, take))
    }

    fn give(&self, p: &Principal, held: &Held, give: Give) {
        let Some(id) = held.0.clone() else { return };
        self.held.remove(&id);
        let (kind, settle) = match give {
            Give::Connection => ("connection", (0, 0, 0.0)),
            Give::Turn => ("turn", (0, 0, 0.0)),
            Give::Settle {
                reserved,
                tokens,
                usd,
            } => ("settle", (reserved.tokens, tokens, usd)),
        };
        let limits = self.policy.of(&p.tenant);
        let tpm = (limits.0.tokens_per_min, limits.1.tokens_per_min);
        let keys = self.cluster.limit_keys(&p.tenant, &p.user);
        let cluster = self.cluster.clone();
        // A give never waits. Without a runtime (the process is ending) the lease returns it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if cluster
                .limit_give(&keys, kind, &id, settle, tpm)
                .await
                .is_err()
            {
                crate::metrics::cluster_error("limits");
                tracing::warn!(kind, "limit not given back; its lease returns it");
            }
        });
    }

    fn usage<'a>(&'a self, tenant: &'a str) -> Pending<'a, Usage> {
        Box::pin(async move {
            let keys = self.cluster.limit_keys(tenant, "");
            let counts = self.cluster.limit_usage(&keys).await.unwrap_or_default();
            self.policy.usage(tenant, counts)
        })
    }
}

/// Renews this node's slots and reservations a few times per lease, one call per
/// principal.
async fn renew(
    cluster: Arc<Cluster>,
    held: std::sync::Weak<DashMap<Arc<str>, (Principal, &'static str)>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cluster.lease / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(held) = held.upgrade() else { return };
        let mut by_principal: std::collections::HashMap<Principal, Vec<(&'static str, String)>> =
            std::collections::HashMap::new();
        for e in held.iter() {
            let (p, kind) = e.value();
            by_principal
                .entry(p.clone())
                .or_default()
                .push((kind, e.key().to_string()));
        }
        drop(held);
        for (p, items) in by_principal {
            let keys = cluster.limit_keys(&p.tenant, &p.user);
            for chunk in items.chunks(500) {
                if cluster.limit_renew(&keys, chunk).await.is_err() {
                    crate::metrics::cluster_error("limits");
                }
            }
        }
    }
}
