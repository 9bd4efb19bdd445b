//! The vector store behind one interface: `edge` (qdrant-edge in-process, default) or
//! `remote` (a Qdrant server or cluster over gRPC). The two share no types, so confab's own
//! point and hit types sit here and each backend adapts them.
//!
//! Every point carries tenant, document id, chunk index, title and text; every search and
//! delete is filtered by tenant.

mod edge;
mod remote;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{VectorBackend, VectorConfig};

/// Why a vector-store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VectorError {
    #[error("vector store: {0}")]
    Store(String),
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    #[error("vector of dimension {got} where {expected} is expected")]
    Dimension { got: usize, expected: usize },
}

/// One chunk to index.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPoint {
    pub tenant: String,
    pub doc_id: String,
    pub chunk: usize,
    pub title: String,
    pub text: String,
    pub vector: Vec<f32>,
}

impl ChunkPoint {
    /// Stable id: the same chunk of the same document always lands on the same point.
    pub fn id(&self) -> Uuid {
        point_id(&self.tenant, &self.doc_id, self.chunk)
    }

    fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "tenant": self.tenant,
            "doc_id": self.doc_id,
            "chunk": self.chunk,
            "title": self.title,
            "text": self.text,
        })
    }
}

/// The point id of a chunk.
pub fn point_id(tenant: &str, doc_id: &str, chunk: usize) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{tenant}\u{1f}{doc_id}\u{1f}{chunk}").as_bytes(),
    )
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    pub chunk: usize,
    pub title: String,
    pub text: String,
    pub score: f32,
}

#[derive(Deserialize)]
struct StoredPayload {
    doc_id: String,
    chunk: usize,
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
}

impl Hit {
    fn from_payload(payload: serde_json::Value, score: f32) -> Option<Self> {
        let p: StoredPayload = serde_json::from_value(payload).ok()?;
        Some(Hit {
            doc_id: p.doc_id,
            chunk: p.chunk,
            title: p.title,
            text: p.text,
            score,
        })
    }
}

/// The configured backend.
pub enum VectorStore {
    Edge(edge::EdgeStore),
    Remote(remote::RemoteStore),
}

impl VectorStore {
    /// Opens (or creates) the store with `dim`-dimensional cosine vectors and keyword indexes
    /// on tenant and document id.
    pub async fn open(cfg: &VectorConfig, dim: usize) -> Result<Self, VectorError> {
        match cfg.backend {
            VectorBackend::Edge => Ok(VectorStore::Edge(edge::EdgeStore::open(cfg, dim).await?)),
            VectorBackend::Remote => Ok(VectorStore::Remote(
                remote::RemoteStore::open(cfg, dim).await?,
            )),
        }
    }

    /// The dimension the store was opened with.
    pub fn dim(&self) -> usize {
        match self {
            VectorStore::Edge(s) => s.dim(),
            VectorStore::Remote(s) => s.dim(),
        }
    }

    /// Every vector in and out goes through here, for both backends.
    fn check_dim(&self, v: &[f32]) -> Result<(), VectorError> {
        if v.len() != self.dim() {
            return Err(VectorError::Dimension {
                got: v.len(),
                expected: self.dim(),
            });
        }
        Ok(())
    }

    /// Inserts or replaces points (same id = same tenant, document and chunk).
    pub async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        for p in &points {
            self.check_dim(&p.vector)?;
        }
        match self {
            VectorStore::Edge(s) => s.upsert(points).await,
            VectorStore::Remote(s) => s.upsert(points).await,
        }
    }

    /// The `k` nearest chunks of `tenant` scoring at least `floor`, best first.
    pub async fn search(
        &self,
        tenant: &str,
        vector: Vec<f32>,
        k: usize,
        floor: Option<f32>,
    ) -> Result<Vec<Hit>, VectorError> {
        self.check_dim(&vector)?;
        let t0 = std::time::Instant::now();
        let (backend, result) = match self {
            VectorStore::Edge(s) => ("edge", s.search(tenant, vector, k, floor).await),
            VectorStore::Remote(s) => ("remote", s.search(tenant, vector, k, floor).await),
        };
        crate::metrics::vector_search(backend, t0.elapsed());
        result
    }

    /// Removes every chunk of a document of `tenant`.
    pub async fn delete_document(&self, tenant: &str, doc_id: &str) -> Result<(), VectorError> {
        match self {
            VectorStore::Edge(s) => s.delete_document(tenant, doc_id).await,
            VectorStore::Remote(s) => s.delete_document(tenant, doc_id).await,
        }
    }

    /// Chunks stored for `tenant`.
    pub async fn count(&self, tenant: &str) -> Result<usize, VectorError> {
        match self {
            VectorStore::Edge(s) => s.count(tenant).await,
            VectorStore::Remote(s) => s.count(tenant).await,
        }
    }

    /// Makes writes durable (edge: flush to disk; remote: writes already wait).
    pub async fn flush(&self) -> Result<(), VectorError> {
        match self {
            VectorStore::Edge(s) => s.flush().await,
            VectorStore::Remote(_) => Ok(()),
        }
    }
}

/// A Qdrant REST-format filter: `must` match on tenant (and optionally document).
fn tenant_filter(tenant: &str, doc_id: Option<&str>) -> serde_json::Value {
    let mut must = vec![serde_json::json!({"key": "tenant", "match": {"value": tenant}})];
    if let Some(d) = doc_id {
        must.push(serde_json::json!({"key": "doc_id", "match": {"value": d}}));
    }
    serde_json::json!({ "must": must })
}
