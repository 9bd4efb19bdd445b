//! Document ingestion: upload → type check by content → background job (parse → chunk →
//! embed in parallel batches → upsert in batches, invisible until complete → publish).
//!
//! Uploads are answered at once with a `queued` record; jobs run through a bounded queue on
//! a few workers. The same bytes uploaded again are a no-op; a new upload under the same name
//! is a new version that replaces the old chunks only once it is fully indexed. A job cut by
//! a crash or shutdown runs again at the next start (its upload is kept until it ends).

pub mod chunk;
pub mod detect;
mod jobs;
pub mod parse;
pub mod registry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::retrieval::{Retrieval, RetrievalError};

pub use chunk::{Chunk, Chunker};
pub use detect::DocKind;
pub use registry::{DocStatus, DocumentRecord};

use registry::{Registry, now_ms};

/// Why an upload or a job failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("the upload has {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("unsupported document: {0}; send a PDF, HTML, Markdown or plain UTF-8 text")]
    Unsupported(String),
    #[error("{0}")]
    Parse(String),
    #[error("no such document")]
    NotFound,
    #[error("the ingestion queue is full ({0} jobs waiting); try again later")]
    Overloaded(usize),
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    #[error("the job was cancelled (the document was deleted or replaced)")]
    Cancelled,
    #[error("ingestion: {0}")]
    Internal(String),
}

/// A job: one version of one document.
#[derive(Debug, Clone)]
struct JobRef {
    tenant: String,
    id: String,
    version: u64,
}

/// The ingestion service; cheap to share behind an `Arc`.
pub struct Ingestor {
    registry: Registry,
    retrieval: Arc<Retrieval>,
    chunker: Arc<Chunker>,
    cfg: IngestConfig,
    queue: mpsc::Sender<JobRef>,
    /// Cancels the running job of a document when it is replaced or deleted.
    running: Mutex<HashMap<(String, String), CancellationToken>>,
    /// Woken on every final state, for callers that wait.
    changed: Notify,
}

impl Ingestor {
    /// Opens the records under `<data_dir>/documents`, re-queues interrupted jobs and starts
    /// the workers on `tracker`; they stop when `stop` is cancelled.
    pub fn start(
        retrieval: Arc<Retrieval>,
        cfg: IngestConfig,
        data_dir: &std::path::Path,
        tokenizer_json: &std::path::Path,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Self>, IngestError> {
        let registry = Registry::open(data_dir.join("documents"))?;
        let chunker = Chunker::new(tokenizer_json, cfg.chunk_tokens, cfg.overlap_tokens)?;
        let resume: Vec<DocumentRecord> = registry
            .all()
            .into_iter()
            .filter(|r| !r.status.is_final())
            .collect();
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(resume.len()));
        let me = Arc::new(Self {
            registry,
            retrieval,
            chunker: Arc::new(chunker),
            cfg,
            queue: tx,
            running: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        for r in resume {
            me.recover(r);
        }
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..me.cfg.workers {
            let (me, rx, stop) = (me.clone(), rx.clone(), stop.clone());
            tracker.spawn(async move {
                loop {
                    let job = tokio::select! {
                        _ = stop.cancelled() => break,
                        job = async { rx.lock().await.recv().await } => job,
                    };
                    let Some(job) = job else { break };
                    me.process(job, &stop).await;
                }
            });
        }
        Ok(me)
    }

    /// A job found unfinished at start runs again if its upload was kept.
    fn recover(&self, r: DocumentRecord) {
        let job = JobRef {
            tenant: r.tenant.clone(),
            id: r.id.clone(),
            version: r.version,
        };
        let kept = self
            .registry
            .upload_path(&r.tenant, &r.id, r.version)
            .exists();
        if kept && self.queue.try_send(job).is_ok() {
            tracing::info!(doc = %r.id, version = r.version, "resuming an interrupted ingestion job");
            let _ = self.registry.update(&r.tenant, &r.id, |r| {
                r.status = DocStatus::Queued;
                r.chunks_done = 0;
            });
        } else {
            let _ = self.registry.update(&r.tenant, &r.id, |r| {
                r.status = DocStatus::Failed;
                r.error = Some("interrupted by a restart, and the upload was not kept".into());
            });
        }
    }

    /// The chunker (benchmarks and tests size chunks with it).
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        self.registry.get(tenant, id)
    }

    pub fn list(&self, tenant: &str) -> Vec<DocumentRecord> {
        self.registry.list(tenant)
    }

    /// Accepts an upload: checks size and type, then queues a job. The same bytes already
    /// uploaded are a no-op that returns that document's record (its status tells whether
    /// it is indexed or still on its way).
    pub async fn submit(
        &self,
        tenant: &str,
        name: &str,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<DocumentRecord, IngestError> {
        if bytes.len() > self.cfg.max_upload_bytes {
            return Err(IngestError::TooLarge {
                bytes: bytes.len(),
                limit: self.cfg.max_upload_bytes,
            });
        }
        let kind = detect::sniff(&bytes, name, content_type)?;
        let (bytes, sha256) = tokio::task::spawn_blocking(move || {
            let hash = Sha256::digest(&bytes);
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            (bytes, hex)
        })
        .await
        .map_err(|e| IngestError::Internal(format!("hashing task failed: {e}")))?;
        // Unnamed uploads are named by their content, so they never replace each other.
        let name = match name.trim() {
            "" => format!("untitled-{}", &sha256[..12]),
            n => n.to_string(),
        };
        let name = name.as_str();
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{tenant}\u{1f}{name}").as_bytes(),
        )
        .to_string();
        let key = (tenant.to_string(), id.clone());
        let now = now_ms();
        // Decide under the lock: the same bytes, a new version, or a new document.
        let (record, previous) = self.registry.with(|records| {
            if let Some(same) = records
                .values()
                .find(|r| r.tenant == tenant && r.sha256 == sha256 && r.status != DocStatus::Failed)
            {
                return (same.clone(), None);
            }
            let previous = records.get(&key).cloned();
            let record = DocumentRecord {
                id: id.clone(),
                tenant: tenant.to_string(),
                name: name.to_string(),
                title: name.to_string(),
                kind,
                bytes: bytes.len() as u64,
                sha256: sha256.clone(),
                version: previous.as_ref().map_or(1, |p| p.version + 1),
                status: DocStatus::Queued,
                live_version: previous.as_ref().and_then(|p| p.live_version),
                chunks: previous.as_ref().map_or(0, |p| p.chunks),
                chunks_total: 0,
                chunks_done: 0,
                error: None,
                created_ms: previous.as_ref().map_or(now, |p| p.created_ms),
                updated_ms: now,
            };
            records.insert(key.clone(), record.clone());
            (record, Some(previous))
        });
        let Some(previous) = previous else {
            crate::metrics::ingested("unchanged", 0);
            return Ok(record);
        };
        let undo = |e: IngestError| {
            self.registry.restore(tenant, &id, previous.clone());
            self.registry.drop_upload(tenant, &id, record.version);
            e
        };
        if let Some(old) = self.running_token(tenant, &id) {
            old.cancel();
        }
        self.registry
            .save_upload(tenant, &id, record.version, &bytes)
            .map_err(undo)?;
        self.registry.persist(&record).map_err(undo)?;
        let job = JobRef {
            tenant: tenant.to_string(),
            id: id.clone(),
            version: record.version,
        };
        if self.queue.try_send(job).is_err() {
            let waiting = self.queue.max_capacity() - self.queue.capacity();
            return Err(undo(IngestError::Overloaded(waiting)));
        }
        crate::metrics::ingest_queue(self.queue.max_capacity() - self.queue.capacity());
        Ok(record)
    }

    fn running_token(&self, tenant: &str, id: &str) -> Option<CancellationToken> {
        let g = self.running.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&(tenant.to_string(), id.to_string())).cloned()
    }

    /// Deletes a document: cancels its job, removes every chunk and the record.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<DocumentRecord, IngestError> {
        let record = self
            .registry
            .remove(tenant, id)
            .ok_or(IngestError::NotFound)?;
        if let Some(t) = self.running_token(tenant, id) {
            t.cancel();
        }
        let store = &self.retrieval.store;
        store
            .delete_document(tenant, id)
            .await
            .map_err(RetrievalError::from)?;
        store.flush().await.map_err(RetrievalError::from)?;
        self.retrieval.bump_version(tenant);
        self.changed.notify_waiters();
        Ok(record)
    }

    /// Waits until the document reaches a final state (or `timeout` passes) and returns it.
    pub async fn wait(&self, tenant: &str, id: &str, timeout: Duration) -> Option<DocumentRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let r = self.registry.get(tenant, id)?;
            if r.status.is_final() {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.registry.get(tenant, id);
            }
        }
    }
}
