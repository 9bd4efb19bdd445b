//! The answer cache section (`[cache]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How strict the semantic layer is (`cache.semantic`, per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SemanticMode {
    /// No semantic hits: exact repeats only.
    Off,
    /// The same content words in the same order; only function words, case, punctuation
    /// and inflection may differ.
    Strict,
    /// Also other wording, as long as numbers, negation, polarity, entities, question
    /// words and the order of a relation's arguments agree.
    #[default]
    Balanced,
}

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
    /// Cosine similarity from which a cached prompt is a candidate for the semantic layer;
    /// the check of `semantic` then decides (`examples/cache_calibration`).
    pub semantic_threshold: f32,
    /// What the semantic layer accepts beyond the similarity floor: `off`, `strict` or
    /// `balanced` (see `cache/verify.rs`).
    pub semantic: SemanticMode,
    /// Per-tenant settings, by tenant name.
    pub tenants: BTreeMap<String, TenantCache>,
}

/// `[cache.tenants.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCache {
    pub semantic: SemanticMode,
}

impl CacheConfig {
    /// The semantic mode of `tenant`'s turns.
    pub fn semantic_of(&self, tenant: &str) -> SemanticMode {
        self.tenants
            .get(tenant)
            .map_or(self.semantic, |t| t.semantic)
    }
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
            semantic: SemanticMode::Balanced,
            tenants: BTreeMap::new(),
        }
    }
}
