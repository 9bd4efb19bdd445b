//! Retrieval: search the tenant's chunks by meaning (dense embeddings), by words (BM25 sparse
//! vectors, IDF applied by the store) or both fused by reciprocal rank; drop duplicates.

mod fusion;
mod ground;
mod grounding;
mod versions;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};

use crate::config::{Config, RetrievalConfig, SearchMode};
use crate::embedding::{EmbedError, Embedder};
use crate::error::ErrorCode;
use crate::vector::{Hit, SparseVec, VectorError, VectorStore};

pub use grounding::{Grounding, Screened};
pub use versions::{CorpusVersions, LocalVersions, SharedVersions};

/// Why retrieval failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RetrievalError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Vector(#[from] VectorError),
    #[error("{0}")]
    Invalid(String),
}

/// A search with its bookkeeping.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub hits: Vec<Hit>,
    pub dropped_duplicates: usize,
    pub took: Duration,
}

/// Retrieval-cache key: tenant, corpus version, query text, k, score floor (bits), mode.
type SearchKey = (String, u64, String, usize, u32, SearchMode);

/// Cached search results with the number of dropped duplicates.
type CachedSearch = Arc<(Vec<Hit>, usize)>;

fn search_key(
    tenant: &str,
    version: u64,
    query: &str,
    k: usize,
    floor: f32,
    mode: SearchMode,
) -> SearchKey {
    (
        tenant.to_string(),
        version,
        query.to_string(),
        k,
        floor.to_bits(),
        mode,
    )
}

/// The embedding service and the vector store together.
pub struct Retrieval {
    pub embedder: Embedder,
    pub store: VectorStore,
    pub cfg: RetrievalConfig,
    /// Per-tenant corpus versions (the caches key on them).
    versions: Box<dyn CorpusVersions>,
    /// Search results by query, scoped like the answer cache; `None` when caching is off.
    searches: Option<Cache<SearchKey, CachedSearch>>,
    /// Qdrant's own BM25 text pipeline (tokenizer, stop words, stemmer), so sparse vectors
    /// match what a Qdrant server would compute.
    bm25: EdgeBm25,
}

fn bm25(avg_len: f64) -> Result<EdgeBm25, RetrievalError> {
    let cfg: EdgeBm25Config = serde_json::from_value(serde_json::json!({ "avg_len": avg_len }))
        .map_err(|e| RetrievalError::Invalid(format!("bm25 config: {e}")))?;
    EdgeBm25::new(cfg).map_err(|e| RetrievalError::Invalid(format!("bm25: {e}")))
}

impl Retrieval {
    /// Loads the model (off the async runtime) and opens the store.
    pub async fn start(config: &Config) -> Result<Self, RetrievalError> {
        let emb_cfg = config.embedding.clone();
        let embedder = tokio::task::spawn_blocking(move || Embedder::start(&emb_cfg))
            .await
            .map_err(|e| EmbedError::Model(format!("model loading task failed: {e}")))??;
        let store = VectorStore::open(&config.vector, embedder.dim()).await?;
        let searches = config.cache.enabled.then(|| {
            Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(config.cache.ttl_secs))
                .build()
        });
        Ok(Self {
            embedder,
            store,
            cfg: config.retrieval.clone(),
            versions: Box::new(LocalVersions::default()),
            searches,
            bm25: bm25(config.retrieval.bm25_avg_len)?,
        })
    }

    /// Shares the corpus versions through `versions` (cluster mode) instead of this
    /// process's own.
    pub fn with_versions(mut self, versions: Box<dyn CorpusVersions>) -> Self {
        self.versions = versions;
        self
    }

    /// The BM25 term weights of a chunk.
    pub fn sparse_document(&self, text: &str) -> SparseVec {
        let v = self.bm25.embed_document(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    /// The BM25 query terms of a query.
    pub fn sparse_query(&self, text: &str) -> SparseVec {
        let v = self.bm25.embed_query(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    /// The tenant's corpus version.
    pub fn corpus_version(&self, tenant: &str) -> u64 {
        self.versions.current(tenant)
    }

    /// Every upload or delete calls this: caches keyed on the version stop matching.
    pub fn bump_version(&self, tenant: &str) {
        self.versions.bump(tenant);
    }

    fn cached_search(&self, key: &SearchKey) -> Option<SearchOutcome> {
        let cache = self.searches.as_ref()?;
        let hit = cache.get(key);
        crate::metrics::cache_lookup("retrieval", hit.is_some());
        hit.map(|h| SearchOutcome {
            hits: h.0.clone(),
            dropped_duplicates: h.1,
            took: Duration::ZERO,
        })
    }

    /// Searches with a query vector the caller already has (turns embed once, for the
    /// semantic cache and for search).
    pub async fn search_vector(
        &self,
        tenant: &str,
        query: &str,
        vector: Vec<f32>,
        k: usize,
        floor: f32,
    ) -> Result<SearchOutcome, RetrievalError> {
        let t0 = Instant::now();
        let mode = self.cfg.mode;
        let key = search_key(tenant, self.corpus_version(tenant), query, k, floor, mode);
        if let Some(found) = self.cached_search(&key) {
            return Ok(found);
        }
        self.search_store(key, tenant, query, Some(vector), t0)
            .await
    }

    /// The tenant's best `k` chunks for `query`, duplicates removed. Dense and hybrid
    /// results score at least `floor` (cosine); sparse results are ranked by BM25 alone. A
    /// cached result skips the embedding too.
    pub async fn search(
        &self,
        tenant: &str,
        query: &str,
        k: usize,
        floor: f32,
        mode: SearchMode,
    ) -> Result<SearchOutcome, RetrievalError> {
        let t0 = Instant::now();
        let key = search_key(tenant, self.corpus_version(tenant), query, k, floor, mode);
        if let Some(found) = self.cached_search(&key) {
            return Ok(found);
        }
        let vector = match mode {
            SearchMode::Sparse => None,
            _ => Some(self.embedder.embed_query(query).await?),
        };
        self.search_store(key, tenant, query, vector, t0).await
    }

    /// The store queries behind a cache miss; the result is cached under `key`.
    async fn search_store(
        &self,
        key: SearchKey,
        tenant: &str,
        query: &str,
        vector: Option<Vec<f32>>,
        t0: Instant,
    ) -> Result<SearchOutcome, RetrievalError> {
        let (k, floor, mode) = (key.3, f32::from_bits(key.4), key.5);
        // Ask for more than k so that dropping duplicates (and fusing) still leaves k.
        let depth = k * 2;
        let raw = match (mode, vector) {
            (SearchMode::Sparse, _) => self
                .store
                .search_sparse(tenant, self.sparse_query(query), depth)
                .await?
                .into_iter()
                .map(|h| h.hit)
                .collect(),
            (SearchMode::Dense, Some(v)) => {
                self.store.search(tenant, v, depth, Some(floor)).await?
            }
            (SearchMode::Hybrid, Some(v)) => {
                let depth = depth.max(20);
                let dense = self.store.search(tenant, v.clone(), depth, None).await?;
                let sparse = self
                    .store
                    .search_sparse(tenant, self.sparse_query(query), depth)
                    .await?;
                fusion::rrf(&v, dense, sparse, self.cfg.rrf_k, floor)
            }
            (_, None) => return Err(RetrievalError::Invalid("no query vector".into())),
        };
        let (hits, dropped_duplicates) = dedupe(raw, k);
        if let Some(c) = &self.searches {
            c.insert(key, Arc::new((hits.clone(), dropped_duplicates)));
        }
        Ok(SearchOutcome {
            hits,
            dropped_duplicates,
            took: t0.elapsed(),
        })
    }
}

/// Keeps the best hit per (document, chunk) and per identical text, up to `k`.
fn dedupe(hits: Vec<Hit>, k: usize) -> (Vec<Hit>, usize) {
    let mut seen_chunks = HashSet::new();
    let mut seen_text = HashSet::new();
    let mut out = Vec::new();
    let mut dropped = 0;
    for h in hits {
        let text_key: String = h
            .text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if !seen_chunks.insert((h.doc_id.clone(), h.chunk)) || !seen_text.insert(text_key) {
            dropped += 1;
            continue;
        }
        if out.len() < k {
            out.push(h);
        }
    }
    (out, dropped)
}

impl From<&RetrievalError> for ErrorCode {
    fn from(e: &RetrievalError) -> Self {
        use RetrievalError as R;
        match e {
            R::Embed(EmbedError::Overloaded(_)) => ErrorCode::Overloaded,
            R::Invalid(_) => ErrorCode::InvalidMessage,
            R::Embed(_) | R::Vector(_) => ErrorCode::RetrievalUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, chunk: usize, text: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk,
            title: String::new(),
            section: String::new(),
            page: None,
            text: text.into(),
            score,
        }
    }

    #[test]
    fn drops_same_text_in_other_documents() {
        let (hits, dropped) = dedupe(
            vec![
                hit("a", 0, "The  WAL is replayed.", 0.9),
                hit("b", 3, "the wal is replayed.", 0.8),
                hit("a", 1, "Other text", 0.7),
            ],
            5,
        );
        assert_eq!(dropped, 1);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[1].chunk, 1);
    }
}
