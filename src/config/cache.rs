//! The answer cache section (`[cache]`).

use serde::{Deserialize, Serialize};

/// Cache settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Entries expire this long after they were stored.
    pub ttl_secs: u64,
    /// Bytes of answers kept per tenant.
    pub max_bytes_per_tenant: u64,
    /// Tenants with a cache at once (least recently used go first).
    pub max_tenants: u64,
    /// Answers kept per scope (same tenant, corpus, conversation and chain).
    pub max_entries_per_scope: usize,
    /// Cosine similarity at or above which a cached prompt counts as the same question.
    /// Calibrated on STS-B (`examples/cache_calibration`): at 0.92, 0.37% of pairs rated
    /// ≤ 2.5 would hit (wrong answers) and 45.5% of pairs rated ≥ 4.5 do (useful hits); 0.95
    /// halves the false hits (0.15%) but loses a third of the useful ones (29%).
    pub semantic_threshold: f32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 3_600,
            max_bytes_per_tenant: 64 * 1024 * 1024,
            max_tenants: 10_000,
            max_entries_per_scope: 128,
            semantic_threshold: 0.92,
        }
    }
}
