//! Per-tenant corpus versions: every upload or delete bumps the tenant's, so every cache
//! keyed on it (answers, searches) stops matching at once.
//!
//! Behind a trait so that replicas can share one counter per tenant (cluster mode); the
//! in-process one is a concurrent map.

use dashmap::DashMap;

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
