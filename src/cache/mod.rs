//! The answer cache: an exact layer (normalised prompt) and a semantic layer (cosine
//! similarity of the prompt embedding) over answers of completed turns.
//!
//! Wrong hits are what make semantic caches dangerous, so a lookup only ever compares entries
//! of the same scope: tenant, corpus version (bumped by every upload and delete), conversation
//! state (a hash of the room's history) and chain. Scopes are the cache keys, so a lookup
//! touches one small list, never every tenant's entries. Each tenant has its own byte-bounded
//! moka cache, so one tenant cannot evict the others.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

mod verify;

pub use self::verify::{Rejection, SemanticMode, Signature, check};
pub use crate::config::CacheConfig;
pub use crate::protocol::CacheLayer;
use crate::protocol::TurnSnapshot;
use crate::retrieval::Grounding;

/// Everything an entry must share with a lookup to be considered at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub corpus_version: u64,
    /// [`conversation_state`] of the room's history.
    pub conversation: u64,
    pub chain: String,
    /// Whether the answer was grounded in the tenant's documents: a grounded answer is never
    /// served for an ungrounded question, nor the other way round.
    pub retrieval: bool,
}

/// A stored answer with what is needed to replay it as a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    pub prompt: String,
    pub embedding: Option<Vec<f32>>,
    pub text: String,
    /// What retrieval gave the original turn (its sources), replayed as its tool event.
    pub grounding: Option<Arc<Grounding>>,
    pub model: String,
    pub cost_usd: f64,
    pub citations: Vec<usize>,
    /// What the semantic layer's check compares (set from the prompt as asked, at insert).
    pub signature: Signature,
}

impl CachedAnswer {
    fn weight(&self) -> usize {
        self.prompt.len()
            + self.text.len()
            + self.embedding.as_ref().map_or(0, |e| e.len() * 4)
            + self.grounding.as_ref().map_or(0, |g| g.weight())
            + 128
    }
}

/// A lookup that found an answer.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub answer: Arc<CachedAnswer>,
    pub layer: CacheLayer,
    pub similarity: f32,
}

type Entries = Arc<Vec<Arc<CachedAnswer>>>;

/// Per-tenant caches of scoped answer lists.
pub struct AnswerCache {
    cfg: CacheConfig,
    tenants: Cache<String, Cache<Scope, Entries>>,
}

/// Lower case, single spaces, no trailing punctuation: "What is X ?" == "what is x".
pub fn normalize(prompt: &str) -> String {
    let s = prompt
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    s.trim_end_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_string()
}

/// A hash of the conversation the model sees before the question: the system prompt (whether
/// confab's own opens it, and the client's own messages) and every earlier turn as it
/// is sent, its speaker's name included. The same question after different turns is a
/// different question.
pub fn conversation_state(system: (bool, &[String]), history: &[TurnSnapshot]) -> u64 {
    let mut h = DefaultHasher::new();
    // The system prompt (confab's or not, and the client's own) changes the answer as much
    // as the history does.
    system.hash(&mut h);
    for t in history {
        t.from.name.hash(&mut h);
        normalize(&t.prompt).hash(&mut h);
        t.answer.hash(&mut h);
    }
    h.finish()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

impl AnswerCache {
    pub fn new(cfg: CacheConfig) -> Self {
        let tenants = Cache::builder().max_capacity(cfg.max_tenants).build();
        Self { cfg, tenants }
    }

    fn tenant(&self, tenant: &str) -> Cache<Scope, Entries> {
        let (bytes, ttl) = (
            self.cfg.max_bytes_per_tenant,
            Duration::from_secs(self.cfg.ttl_secs),
        );
        self.tenants.get_with(tenant.to_string(), || {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(|_k: &Scope, v: &Entries| {
                    v.iter()
                        .map(|e| e.weight())
                        .sum::<usize>()
                        .min(u32::MAX as usize) as u32
                })
                .time_to_live(ttl)
                .eviction_listener(|_, _, cause| {
                    if cause.was_evicted() {
                        crate::metrics::cache_eviction();
                    }
                })
                .build()
        })
    }

    /// The exact layer first, then the best semantic match at or above the threshold.
    pub fn lookup(
        &self,
        tenant: &str,
        scope: &Scope,
        prompt: &str,
        embedding: Option<&[f32]>,
    ) -> Option<CacheHit> {
        let entries = self.tenants.get(tenant)?.get(scope)?;
        let norm = normalize(prompt);
        if let Some(e) = entries.iter().rev().find(|e| e.prompt == norm) {
            return Some(CacheHit {
                answer: e.clone(),
                layer: CacheLayer::Exact,
                similarity: 1.0,
            });
        }
        let query = embedding?;
        let mode = self.cfg.semantic_of(tenant);
        if mode == SemanticMode::Off {
            return None;
        }
        self.semantic(&entries, prompt, query, mode)
    }

    /// The most similar entry above the floor that also passes the check; every near
    /// match the check turns down is counted by its reason.
    fn semantic(
        &self,
        entries: &Entries,
        prompt: &str,
        query: &[f32],
        mode: SemanticMode,
    ) -> Option<CacheHit> {
        let mut near: Vec<(&Arc<CachedAnswer>, f32)> = entries
            .iter()
            .filter_map(|e| Some((e, cosine(query, e.embedding.as_deref()?))))
            .filter(|(_, sim)| *sim >= self.cfg.semantic_threshold)
            .collect();
        if near.is_empty() {
            return None;
        }
        near.sort_by(|a, b| b.1.total_cmp(&a.1));
        let asked = Signature::of(prompt);
        near.into_iter()
            .find_map(|(e, sim)| match check(&e.signature, &asked, mode) {
                Ok(()) => Some(CacheHit {
                    answer: e.clone(),
                    layer: CacheLayer::Semantic,
                    similarity: sim,
                }),
                Err(why) => {
                    crate::metrics::cache_rejected(why.as_str());
                    None
                }
            })
    }

    /// Stores a completed answer (callers store only finished, non-error, non-degraded turns).
    pub fn insert(&self, tenant: &str, scope: Scope, mut answer: CachedAnswer) {
        answer.signature = Signature::of(&answer.prompt);
        answer.prompt = normalize(&answer.prompt);
        let cache = self.tenant(tenant);
        let mut list: Vec<Arc<CachedAnswer>> = cache
            .get(&scope)
            .map(|e| e.as_ref().clone())
            .unwrap_or_default();
        list.retain(|e| e.prompt != answer.prompt);
        list.push(Arc::new(answer));
        let excess = list.len().saturating_sub(self.cfg.max_entries_per_scope);
        list.drain(..excess);
        cache.insert(scope, Arc::new(list));
        // moka applies writes to its counters lazily; settle this tenant's so the gauge is
        // current (the work is amortised: moka would run it on a later call anyway).
        cache.run_pending_tasks();
        crate::metrics::cache_entries(self.entry_count());
    }

    /// Entries held over all tenants: O(tenants), from moka's own counters (current for a
    /// tenant once its pending tasks ran), cheap enough to refresh on every insert.
    pub fn entry_count(&self) -> u64 {
        self.tenants.iter().map(|(_, c)| c.entry_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(v: u64, conv: u64) -> Scope {
        Scope {
            corpus_version: v,
            conversation: conv,
            chain: "default".into(),
            retrieval: true,
        }
    }

    fn answer(prompt: &str, emb: Vec<f32>) -> CachedAnswer {
        CachedAnswer {
            prompt: prompt.into(),
            embedding: Some(emb),
            text: format!("answer to {prompt}"),
            grounding: None,
            model: "m".into(),
            cost_usd: 0.01,
            citations: vec![],
            signature: Signature::default(),
        }
    }

    #[test]
    fn scopes_and_tenants_never_mix() {
        let c = AnswerCache::new(CacheConfig::default());
        c.insert("t1", scope(1, 7), answer("What is X?", vec![1.0, 0.0]));
        let hit = c
            .lookup("t1", &scope(1, 7), "  what is x ", None)
            .map(|h| h.layer);
        assert_eq!(hit, Some(CacheLayer::Exact));
        assert!(
            c.lookup("t2", &scope(1, 7), "What is X?", None).is_none(),
            "other tenant"
        );
        assert!(
            c.lookup("t1", &scope(2, 7), "What is X?", None).is_none(),
            "new corpus version"
        );
        assert!(
            c.lookup("t1", &scope(1, 8), "What is X?", None).is_none(),
            "other conversation"
        );
    }

    #[test]
    fn semantic_layer_respects_the_threshold() {
        let c = AnswerCache::new(CacheConfig::default());
        c.insert("t", scope(0, 0), answer("a", vec![1.0, 0.0]));
        let near = [0.99f32, 0.1];
        let far = [0.7f32, 0.7];
        let hit = c.lookup("t", &scope(0, 0), "b", Some(&near));
        assert_eq!(hit.as_ref().map(|h| h.layer), Some(CacheLayer::Semantic));
        assert!(hit.is_some_and(|h| h.similarity > 0.99));
        assert!(c.lookup("t", &scope(0, 0), "b", Some(&far)).is_none());
    }

    #[test]
    fn a_tenant_can_turn_the_semantic_layer_off() {
        let mut cfg = CacheConfig::default();
        cfg.tenants.insert(
            "careful".into(),
            crate::config::TenantCache {
                semantic: SemanticMode::Off,
            },
        );
        let c = AnswerCache::new(cfg);
        for t in ["careful", "other"] {
            c.insert(t, scope(0, 0), answer("how do cats sleep", vec![1.0, 0.0]));
        }
        let near = [0.99f32, 0.1];
        let asked = "how do the cats sleep";
        assert!(
            c.lookup("careful", &scope(0, 0), asked, Some(&near))
                .is_none()
        );
        assert!(
            c.lookup("other", &scope(0, 0), asked, Some(&near))
                .is_some()
        );
        assert!(
            c.lookup("careful", &scope(0, 0), "How do cats sleep?", None)
                .is_some()
        );
    }

    #[test]
    fn one_tenant_cannot_evict_another() {
        let cfg = CacheConfig {
            max_bytes_per_tenant: 4_096,
            ..CacheConfig::default()
        };
        let c = AnswerCache::new(cfg);
        c.insert("quiet", scope(0, 0), answer("keep me", vec![1.0]));
        for i in 0..500 {
            c.insert("noisy", scope(0, i), answer(&"x".repeat(200), vec![1.0]));
        }
        c.tenants.run_pending_tasks();
        for (_, t) in c.tenants.iter() {
            t.run_pending_tasks();
        }
        assert!(c.lookup("quiet", &scope(0, 0), "keep me", None).is_some());
        let noisy = c
            .tenants
            .get("noisy")
            .map(|t| t.weighted_size())
            .unwrap_or(0);
        assert!(noisy <= 4_096, "noisy tenant bounded: {noisy}");
    }
}
