//! Per-tenant corpus versions: every upload or delete bumps the tenant's, so every cache
//! keyed on it (answers, searches) stops matching at once.
//!
//! Behind a trait so that replicas share one counter per tenant (cluster mode,
//! [`SharedVersions`]); the in-process one is a concurrent map.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::cluster::{BusMsg, Cluster};

/// Where corpus versions live.
pub trait CorpusVersions: Send + Sync {
    /// The tenant's version (0 before its first change).
    fn current(&self, tenant: &str) -> u64;
    /// Moves the tenant to a new version.
    fn bump(&self, tenant: &str);
}

/// Versions of this process's tenants.
#[derive(Debug, Default)]
pub struct LocalVersions {
    versions: DashMap<String, u64>,
}

impl CorpusVersions for LocalVersions {
    fn current(&self, tenant: &str) -> u64 {
        self.versions.get(tenant).map_or(0, |v| *v)
    }

    fn bump(&self, tenant: &str) {
        *self.versions.entry(tenant.to_string()).or_insert(0) += 1;
    }
}

/// Cluster mode: versions shared through Redis. Each node keeps a local version per tenant
/// (read on every turn, so never a network call) that moves whenever the shared value
/// changes — up after a bump anywhere, or down when Redis lost it — and at once for a bump
/// made here. A node sees another's bump when its message arrives, and within a second
/// (the refresh) if it was missed.
pub struct SharedVersions {
    cluster: Arc<Cluster>,
    /// tenant → (the shared value last seen, this node's version).
    local: DashMap<String, (u64, u64)>,
}

/// How often the shared versions are read again, whatever the messages said.
const REFRESH: Duration = Duration::from_secs(1);

impl SharedVersions {
    /// Starts following the shared versions until `stop`.
    pub fn start(cluster: Arc<Cluster>, stop: CancellationToken) -> Arc<Self> {
        let me = Arc::new(Self {
            cluster,
            local: DashMap::new(),
        });
        tokio::spawn(follow(Arc::downgrade(&me), stop));
        me
    }

    /// The shared value of `tenant` is `shared`: a change moves this node's version.
    fn observe(&self, tenant: &str, shared: u64) {
        let mut e = self.local.entry(tenant.to_string()).or_insert((0, 0));
        if e.0 != shared {
            *e = (shared, e.1 + 1);
        }
    }

    async fn refresh(&self) {
        let Ok(all) = self.cluster.corpus_all().await else {
            crate::metrics::cluster_error("corpus");
            return;
        };
        let shared: std::collections::HashMap<String, u64> = all.into_iter().collect();
        let known: Vec<String> = self.local.iter().map(|e| e.key().clone()).collect();
        for tenant in known.iter().filter(|t| !shared.contains_key(*t)) {
            self.observe(tenant, 0);
        }
        for (tenant, v) in shared {
            self.observe(&tenant, v);
        }
    }
}

async fn follow(me: std::sync::Weak<SharedVersions>, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BusMsg>(64);
    let mut subscription = None;
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            Some(_) = rx.recv() => {}
        }
        let Some(me) = me.upgrade() else { return };
        if subscription.is_none() {
            subscription = me.cluster.corpus_subscribe(tx.clone()).await.ok();
        }
        me.refresh().await;
    }
}

impl CorpusVersions for Arc<SharedVersions> {
    fn current(&self, tenant: &str) -> u64 {
        self.local.get(tenant).map_or(0, |e| e.1)
    }

    fn bump(&self, tenant: &str) {
        {
            let mut e = self.local.entry(tenant.to_string()).or_insert((0, 0));
            e.1 += 1;
        }
        let me = self.clone();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            match me.cluster.corpus_bump(&tenant).await {
                // This node already moved for its own bump.
                Ok(v) => {
                    if let Some(mut e) = me.local.get_mut(&tenant) {
                        e.0 = v;
                    }
                }
                Err(e) => {
                    crate::metrics::cluster_error("corpus");
                    tracing::warn!(error = %e, "corpus version not shared; other nodes see it at the next bump");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_are_per_tenant() {
        let v = LocalVersions::default();
        v.bump("a");
        v.bump("a");
        v.bump("b");
        assert_eq!((v.current("a"), v.current("b"), v.current("c")), (2, 1, 0));
    }
}
