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

/// A sparse (BM25 term-weight) vector: token ids and weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// One chunk to index. A document's chunks are written `pending` (invisible to searches)
/// and made live together by [`VectorStore::publish`], so a half-ingested document is
/// never searchable.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPoint {
    pub tenant: String,
    pub doc_id: String,
    /// The document version these chunks belong to (a re-upload writes a new one).
    pub version: u64,
    pub chunk: usize,
    pub title: String,
    /// Heading path inside the document ("Install › Helm"), empty when it has none.
    pub section: String,
    /// First page of the chunk (PDF only).
    pub page: Option<u32>,
    pub text: String,
    pub vector: Vec<f32>,
    pub sparse: SparseVec,
    pub pending: bool,
}

impl ChunkPoint {
    /// Stable id: the same chunk of the same document version always lands on the same
    /// point, so a resumed job overwrites what it wrote before.
    pub fn id(&self) -> Uuid {
        point_id(&self.tenant, &self.doc_id, self.version, self.chunk)
    }

    fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "tenant": self.tenant,
            "doc_id": self.doc_id,
            "version": self.version,
            "chunk": self.chunk,
            "title": self.title,
            "section": self.section,
            "page": self.page,
            "text": self.text,
            "pending": self.pending,
        })
    }
}

/// The point id of a chunk.
pub fn point_id(tenant: &str, doc_id: &str, version: u64, chunk: usize) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{tenant}\u{1f}{doc_id}\u{1f}{version}\u{1f}{chunk}").as_bytes(),
    )
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    pub chunk: usize,
    pub title: String,
    #[serde(default)]
    pub section: String,
    #[serde(default)]
    pub page: Option<u32>,
    pub text: String,
    /// Cosine similarity for dense and hybrid results; the BM25 score for sparse ones.
    pub score: f32,
}

/// A sparse-search result with the chunk's dense vector, so hybrid search can score every
/// candidate by cosine similarity too.
#[derive(Debug, Clone)]
pub struct SparseHit {
    pub hit: Hit,
    pub dense: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct StoredPayload {
    doc_id: String,
    chunk: usize,
    #[serde(default)]
    title: String,
    #[serde(default)]
    section: String,
    #[serde(default)]
    page: Option<u32>,
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
            section: p.section,
            page: p.page,
            text: p.text,
            score,
        })
    }
}

/// Name of the dense vector in both backends.
const DENSE: &str = "dense";
/// Name of the sparse BM25 vector (IDF applied by the store at query time).
const SPARSE: &str = "bm25";

/// Which chunks a filter selects.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// Live chunks of the tenant (what searches see).
    Live,
    /// Every chunk of one document.
    Document(&'a str),
    /// One version of one document.
    Version(&'a str, u64),
    /// Every version of one document but this one.
    OtherVersions(&'a str, u64),
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

    /// The `k` best live chunks of `tenant` for a BM25 query, with their dense vectors.
    pub async fn search_sparse(
        &self,
        tenant: &str,
        query: SparseVec,
        k: usize,
    ) -> Result<Vec<SparseHit>, VectorError> {
        if query.indices.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = std::time::Instant::now();
        let (backend, result) = match self {
            VectorStore::Edge(s) => ("edge", s.search_sparse(tenant, query, k).await),
            VectorStore::Remote(s) => ("remote", s.search_sparse(tenant, query, k).await),
        };
        crate::metrics::vector_search(backend, t0.elapsed());
        result
    }

    /// Makes `version` of a document the searchable one: its pending chunks go live and
    /// every other version's chunks are removed.
    pub async fn publish(
        &self,
        tenant: &str,
        doc_id: &str,
        version: u64,
    ) -> Result<(), VectorError> {
        match self {
            VectorStore::Edge(s) => s.publish(tenant, doc_id, version).await,
            VectorStore::Remote(s) => s.publish(tenant, doc_id, version).await,
        }
    }

    /// Removes every chunk of a document of `tenant`.
    pub async fn delete_document(&self, tenant: &str, doc_id: &str) -> Result<(), VectorError> {
        self.delete(tenant, Scope::Document(doc_id)).await
    }

    /// Removes the chunks of one version (a failed or abandoned ingestion job).
    pub async fn delete_version(
        &self,
        tenant: &str,
        doc_id: &str,
        version: u64,
    ) -> Result<(), VectorError> {
        self.delete(tenant, Scope::Version(doc_id, version)).await
    }

    async fn delete(&self, tenant: &str, scope: Scope<'_>) -> Result<(), VectorError> {
        match self {
            VectorStore::Edge(s) => s.delete(tenant, scope).await,
            VectorStore::Remote(s) => s.delete(tenant, scope).await,
        }
    }

    /// Live chunks stored for `tenant`.
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

/// A Qdrant REST-format filter on the tenant and `scope`.
fn rest_filter(tenant: &str, scope: Scope<'_>) -> serde_json::Value {
    let is = |key: &str, value: serde_json::Value| serde_json::json!({"key": key, "match": {"value": value}});
    let mut must = vec![is("tenant", tenant.into())];
    let mut must_not = Vec::new();
    match scope {
        Scope::Live => must_not.push(is("pending", true.into())),
        Scope::Document(d) => must.push(is("doc_id", d.into())),
        Scope::Version(d, v) => {
            must.push(is("doc_id", d.into()));
            must.push(is("version", v.into()));
        }
        Scope::OtherVersions(d, v) => {
            must.push(is("doc_id", d.into()));
            must_not.push(is("version", v.into()));
        }
    }
    serde_json::json!({ "must": must, "must_not": must_not })
}
