//! Retrieval configuration: the embedding model and its worker pool, the vector store, and
//! how turns search it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Where `scripts/fetch-models.sh` puts its files: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `confab/assets`.
pub fn default_assets_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    std::env::var_os("CONFAB_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("confab").join("assets"))
}

/// The URL of a real Qdrant server for the remote-store tests, if the environment names one.
pub fn test_qdrant_url() -> Option<String> {
    std::env::var("CONFAB_TEST_QDRANT_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The sentence-embedding model and the pool that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// Folder with `model.onnx`, `tokenizer.json`, `config.json`, `special_tokens_map.json`,
    /// `tokenizer_config.json` (all-MiniLM-L6-v2 or a compatible mean-pooled model).
    pub model_dir: PathBuf,
    /// The ONNX Runtime shared library (≥ 1.24).
    pub ort_dylib: PathBuf,
    /// Output dimension of the model.
    pub dim: usize,
    /// Worker threads, each owning one model instance.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// Most texts in one model call.
    pub max_batch: usize,
    /// Most (estimated) tokens in one model call.
    pub max_batch_tokens: usize,
    /// How long a worker waits for more requests to fill a batch that holds bulk texts (a
    /// batch of queries only is run at once).
    pub batch_wait_ms: u64,
    /// Bulk texts waiting before requests are refused as `overloaded`.
    pub queue_capacity: usize,
    /// Query texts waiting before requests are refused as `overloaded`.
    pub query_queue_capacity: usize,
    /// Tokens per text; longer texts are truncated by the tokenizer.
    pub max_length: usize,
    /// Use ONNX Runtime's CUDA provider (needs the `gpu` cargo feature).
    pub gpu: bool,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        let assets = default_assets_dir();
        Self {
            model_dir: assets.join("minilm"),
            ort_dylib: assets.join("onnxruntime").join("libonnxruntime.so.1.31.1"),
            dim: 384,
            workers: 2,
            intra_threads: 1,
            max_batch: 32,
            max_batch_tokens: 8_192,
            batch_wait_ms: 2,
            queue_capacity: 8_192,
            query_queue_capacity: 512,
            max_length: 256,
            gpu: false,
        }
    }
}

/// Which vector store backs retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorBackend {
    /// qdrant-edge in-process, on disk under `data_dir`.
    Edge,
    /// A Qdrant server or cluster over gRPC.
    Remote,
}

/// The vector store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorConfig {
    pub backend: VectorBackend,
    /// Edge: the store lives in `<data_dir>/vectors`.
    pub data_dir: PathBuf,
    /// Remote: gRPC URL, e.g. `http://qdrant:6334`.
    pub url: String,
    pub api_key: Secret,
    pub collection: String,
    pub timeout_ms: u64,
    /// Remote: retries of a failed call (with backoff).
    pub retries: u32,
}

impl Default for VectorConfig {
    fn default() -> Self {
        Self {
            backend: VectorBackend::Edge,
            data_dir: PathBuf::from("data"),
            url: "http://127.0.0.1:6334".into(),
            api_key: Secret::default(),
            collection: "confab_chunks".into(),
            timeout_ms: 5_000,
            retries: 2,
        }
    }
}

/// How turns use retrieval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    /// Off: no model is loaded, turns get no sources, `/v1/search` answers 503.
    pub enabled: bool,
    pub top_k: usize,
    /// Results scoring below this cosine similarity are dropped.
    pub score_floor: f32,
    /// Prompts shorter than this many words are embedded with the previous prompt in front,
    /// so follow-ups ("and in 2020?") still find their documents.
    pub short_prompt_words: usize,
    /// Dense (embeddings), sparse (BM25) or hybrid (both, fused by reciprocal rank).
    pub mode: SearchMode,
    /// The `k` of reciprocal rank fusion: 1 / (rrf_k + rank).
    pub rrf_k: f32,
    /// BM25's expected chunk length in tokens (after stop words are removed).
    pub bm25_avg_len: f64,
}

/// How the store is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    Dense,
    Sparse,
    Hybrid,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Dense => "dense",
            SearchMode::Sparse => "sparse",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

/// Document ingestion: upload limits, the job queue, chunk sizes and batch sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Jobs waiting before uploads are refused as `overloaded`.
    pub queue_capacity: usize,
    /// Documents processed at once.
    pub workers: usize,
    /// Tokens per chunk including the title line (at most `embedding.max_length`).
    pub chunk_tokens: usize,
    /// Tokens carried from the end of one chunk into the next.
    pub overlap_tokens: usize,
    /// Chunks per embedding request; `parallel_batches` requests are in flight per job.
    pub embed_batch: usize,
    pub parallel_batches: usize,
    /// Points per store upsert.
    pub upsert_batch: usize,
    /// Parse each upload in a child process (the `confab parse` subcommand) with memory
    /// and CPU limits, so a hostile document can only kill that child. Off: parse in the
    /// server's own process — for trusted documents only.
    pub isolate_parsing: bool,
    /// The confab binary that parses (default: the running executable).
    pub parser_bin: Option<PathBuf>,
    /// Wall-clock limit of one parse; the child is killed after it (CPU time is capped at
    /// the same number of seconds).
    pub parse_timeout_ms: u64,
    /// Address-space limit of the parsing child.
    pub parse_memory_bytes: u64,
    /// A document may yield at most this many times its upload's size in text (every
    /// block with its heading path), at least 64 KiB's worth.
    pub max_text_ratio: usize,
    /// A PDF's compressed streams may inflate to at most this many times the upload.
    pub max_inflate_ratio: u64,
    /// Chunks one document may have.
    pub max_chunks: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1024 * 1024,
            queue_capacity: 256,
            workers: 2,
            chunk_tokens: 256,
            overlap_tokens: 32,
            embed_batch: 16,
            parallel_batches: 4,
            upsert_batch: 256,
            isolate_parsing: true,
            parser_bin: None,
            parse_timeout_ms: 60_000,
            parse_memory_bytes: 1 << 30,
            max_text_ratio: 8,
            max_inflate_ratio: 100,
            max_chunks: 50_000,
        }
    }
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 5,
            score_floor: 0.25,
            short_prompt_words: 6,
            mode: SearchMode::Hybrid,
            rrf_k: 60.0,
            bm25_avg_len: 100.0,
        }
    }
}
