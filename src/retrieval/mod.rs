//! Retrieval: embed the query, search the tenant's chunks, drop duplicates; and the plain-text
//! upload path (chunk → embed in bulk → upsert).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use uuid::Uuid;

use crate::config::{Config, RetrievalConfig};
use crate::embedding::{EmbedError, Embedder, Priority};
use crate::ingest::chunk::chunk_text;
use crate::vector::{ChunkPoint, Hit, VectorError, VectorStore};

/// Words per chunk (≈ 250 MiniLM tokens, inside its 256-token window) and overlap.
const CHUNK_WORDS: usize = 180;
const CHUNK_OVERLAP: usize = 30;

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

/// Retrieval-cache key: tenant, corpus version, query text, k, score floor (bits).
type SearchKey = (String, u64, String, usize, u32);

/// Cached search results with the number of dropped duplicates.
type CachedSearch = Arc<(Vec<Hit>, usize)>;

fn search_key(tenant: &str, version: u64, query: &str, k: usize, floor: f32) -> SearchKey {
    (
        tenant.to_string(),
        version,
        query.to_string(),
        k,
        floor.to_bits(),
    )
}

/// The embedding service and the vector store together.
pub struct Retrieval {
    pub embedder: Embedder,
    pub store: VectorStore,
    pub cfg: RetrievalConfig,
    /// Per-tenant corpus version: every upload or delete bumps it, so caches keyed on it
    /// stop matching at once.
    versions: Mutex<HashMap<String, u64>>,
    /// Search results by query, scoped like the answer cache; `None` when caching is off.
    searches: Option<Cache<SearchKey, CachedSearch>>,
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
            versions: Mutex::new(HashMap::new()),
            searches,
        })
    }

    /// The tenant's corpus version.
    pub fn corpus_version(&self, tenant: &str) -> u64 {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.get(tenant).copied().unwrap_or(0)
    }

    fn bump_version(&self, tenant: &str) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(tenant.to_string()).or_insert(0) += 1;
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
        let key = search_key(tenant, self.corpus_version(tenant), query, k, floor);
        if let Some(found) = self.cached_search(&key) {
            return Ok(found);
        }
        self.search_store(key, tenant, vector, k, floor, t0).await
    }

    /// The tenant's best `k` chunks for `query` above `floor`, duplicates removed. A cached
    /// result skips the embedding too.
    pub async fn search(
        &self,
        tenant: &str,
        query: &str,
        k: usize,
        floor: f32,
    ) -> Result<SearchOutcome, RetrievalError> {
        let t0 = Instant::now();
        let key = search_key(tenant, self.corpus_version(tenant), query, k, floor);
        if let Some(found) = self.cached_search(&key) {
            return Ok(found);
        }
        let vector = self.embedder.embed_query(query).await?;
        self.search_store(key, tenant, vector, k, floor, t0).await
    }

    /// The store query behind a cache miss; the result is cached under `key`.
    async fn search_store(
        &self,
        key: SearchKey,
        tenant: &str,
        vector: Vec<f32>,
        k: usize,
        floor: f32,
        t0: Instant,
    ) -> Result<SearchOutcome, RetrievalError> {
        // Ask for a few more than k so that dropping duplicates still leaves k.
        let raw = self
            .store
            .search(tenant, vector, k * 2, Some(floor))
            .await?;
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

    /// Stores a plain-text document: same text = same id (re-uploading is idempotent).
    pub async fn ingest_text(
        &self,
        tenant: &str,
        title: &str,
        text: &str,
    ) -> Result<(String, usize), RetrievalError> {
        let result = self.ingest_text_inner(tenant, title, text).await;
        match &result {
            Ok((_, chunks)) => crate::metrics::ingested("indexed", *chunks),
            Err(_) => crate::metrics::ingested("failed", 0),
        }
        result
    }

    async fn ingest_text_inner(
        &self,
        tenant: &str,
        title: &str,
        text: &str,
    ) -> Result<(String, usize), RetrievalError> {
        let chunks = chunk_text(text, CHUNK_WORDS, CHUNK_OVERLAP);
        if chunks.is_empty() {
            return Err(RetrievalError::Invalid("the document has no text".into()));
        }
        let doc_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, text.as_bytes()).to_string();
        let vectors = self
            .embedder
            .embed(
                chunks.iter().map(|c| c.text.clone()).collect(),
                Priority::Bulk,
            )
            .await?;
        let points = chunks
            .into_iter()
            .zip(vectors)
            .map(|(c, vector)| ChunkPoint {
                tenant: tenant.to_string(),
                doc_id: doc_id.clone(),
                chunk: c.index,
                title: title.to_string(),
                text: c.text,
                vector,
            })
            .collect::<Vec<_>>();
        let n = points.len();
        self.store.delete_document(tenant, &doc_id).await?;
        self.store.upsert(points).await?;
        self.store.flush().await?;
        self.bump_version(tenant);
        Ok((doc_id, n))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, chunk: usize, text: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk,
            title: String::new(),
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
