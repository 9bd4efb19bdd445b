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
mod records;
pub mod registry;
pub mod sandbox;

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

use crate::error::ErrorCode;
pub use records::{Claim, RecordStore};
use registry::{LocalRecords, Uploads, now_ms};

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

/// An upload that passed the size and type checks.
struct Upload<'a> {
    tenant: &'a str,
    name: String,
    kind: DocKind,
    bytes: Vec<u8>,
    sha256: String,
}

impl Upload<'_> {
    /// The record of this upload as the next version of `previous` (or the first).
    fn record(&self, id: &str, previous: Option<&DocumentRecord>) -> DocumentRecord {
        let now = now_ms();
        DocumentRecord {
            id: id.to_string(),
            tenant: self.tenant.to_string(),
            name: self.name.clone(),
            title: self.name.clone(),
            kind: self.kind,
            bytes: self.bytes.len() as u64,
            sha256: self.sha256.clone(),
            version: previous.map_or(1, |p| p.version + 1),
            status: DocStatus::Queued,
            live_version: previous.and_then(|p| p.live_version),
            chunks: previous.map_or(0, |p| p.chunks),
            chunks_total: 0,
            chunks_done: 0,
            error: None,
            parse_attempts: 0,
            created_ms: previous.map_or(now, |p| p.created_ms),
            updated_ms: now,
        }
    }
}

/// The bytes back with their SHA-256 in hex, hashed off the async runtime (the record's
/// checksum at upload, and the job's check of the stored bytes against it).
async fn sha256_hex(bytes: Vec<u8>) -> Result<(Vec<u8>, String), IngestError> {
    tokio::task::spawn_blocking(move || {
        let hex = hex::encode(Sha256::digest(&bytes));
        (bytes, hex)
    })
    .await
    .map_err(|e| IngestError::Internal(format!("hashing task failed: {e}")))
}

/// Parses interrupted by the server's death after which a job is failed at start.
const MAX_PARSE_ATTEMPTS: u32 = 2;

/// How uploads are parsed: in a child process (the default), or in this one.
fn sandbox_of(cfg: &IngestConfig) -> Result<sandbox::Sandbox, IngestError> {
    let bin = if cfg.isolate_parsing {
        let bin = match &cfg.parser_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe().map_err(|e| {
                IngestError::Internal(format!("cannot find the confab binary: {e}"))
            })?,
        };
        Some(bin)
    } else {
        None
    };
    Ok(sandbox::Sandbox {
        bin,
        timeout: Duration::from_millis(cfg.parse_timeout_ms),
        memory_bytes: cfg.parse_memory_bytes,
    })
}

/// Unnamed uploads are named by their content, so they never replace each other.
fn upload_name(name: &str, sha256: &str) -> String {
    match name.trim() {
        "" => format!("untitled-{}", &sha256[..12]),
        n => n.to_string(),
    }
}

/// The ingestion service; cheap to share behind an `Arc`.
pub struct Ingestor {
    records: Box<dyn RecordStore>,
    uploads: Uploads,
    sandbox: sandbox::Sandbox,
    retrieval: Arc<Retrieval>,
    chunker: Arc<Chunker>,
    cfg: IngestConfig,
    queue: mpsc::Sender<JobRef>,
    /// Cancels the running job of a document when it is replaced or deleted.
    running: Mutex<HashMap<(String, String), CancellationToken>>,
    /// Woken on every final state, for callers that wait.
    changed: Notify,
    /// Publishes and deletes, one at a time: each checks the record's version first.
    publishing: tokio::sync::Mutex<()>,
}

impl Ingestor {
    /// Opens the records under `<data_dir>/documents`, re-queues interrupted jobs and starts
    /// the workers on `tracker`; they stop when `stop` is cancelled.
    pub async fn start(
        retrieval: Arc<Retrieval>,
        cfg: IngestConfig,
        data_dir: &std::path::Path,
        tokenizer_json: &std::path::Path,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Self>, IngestError> {
        let sandbox = sandbox_of(&cfg)?;
        sandbox.probe().await?;
        let root = data_dir.join("documents");
        let records: Box<dyn RecordStore> = Box::new(LocalRecords::open(root.clone())?);
        let chunker = Chunker::new(tokenizer_json, cfg.chunk_tokens, cfg.overlap_tokens)?;
        let resume: Vec<DocumentRecord> = records
            .all()
            .into_iter()
            .filter(|r| !r.status.is_final())
            .collect();
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(resume.len()));
        let me = Arc::new(Self {
            records,
            uploads: Uploads::new(root),
            sandbox,
            retrieval,
            chunker: Arc::new(chunker),
            cfg,
            queue: tx,
            running: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            publishing: tokio::sync::Mutex::new(()),
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

    /// A job found unfinished at start runs again if its upload was kept — unless its
    /// parse was interrupted twice (the server died in it both times): then it is failed
    /// for good, so a poison document cannot keep the server in a crash loop.
    fn recover(&self, r: DocumentRecord) {
        if r.parse_attempts >= MAX_PARSE_ATTEMPTS {
            tracing::warn!(doc = %r.id, attempts = r.parse_attempts, "failing a job that interrupted the server while parsing");
            let _ = self.records.update(&r.tenant, &r.id, |r| {
                r.status = DocStatus::Failed;
                r.error = Some("interrupted the server twice while parsing; not run again".into());
                r.parse_attempts = 0;
            });
            self.uploads.drop(&r.tenant, &r.id, r.version);
            crate::metrics::ingested("failed", 0);
            return;
        }
        let job = JobRef {
            tenant: r.tenant.clone(),
            id: r.id.clone(),
            version: r.version,
        };
        let kept = self.uploads.path(&r.tenant, &r.id, r.version).exists();
        if kept && self.queue.try_send(job).is_ok() {
            tracing::info!(doc = %r.id, version = r.version, "resuming an interrupted ingestion job");
            let _ = self.records.update(&r.tenant, &r.id, |r| {
                r.status = DocStatus::Queued;
                r.chunks_done = 0;
            });
        } else {
            let _ = self.records.update(&r.tenant, &r.id, |r| {
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
        self.records.get(tenant, id)
    }

    pub fn list(&self, tenant: &str) -> Vec<DocumentRecord> {
        self.records.list(tenant)
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
        let (bytes, sha256) = sha256_hex(bytes).await?;
        let upload = Upload {
            tenant,
            name: upload_name(name, &sha256),
            kind,
            bytes,
            sha256,
        };
        self.accept(upload)
    }

    /// Decides, atomically: the same bytes, a new version, or a new document; then keeps
    /// the bytes and queues the job, undoing the record if either fails.
    fn accept(&self, up: Upload<'_>) -> Result<DocumentRecord, IngestError> {
        let tenant = up.tenant;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{tenant}\u{1f}{}", up.name).as_bytes(),
        )
        .to_string();
        let claim = self
            .records
            .claim(tenant, &id, &up.sha256, &mut |prev| up.record(&id, prev));
        let (record, previous) = match claim {
            Claim::Same(same) => {
                crate::metrics::ingested("unchanged", 0);
                return Ok(same);
            }
            Claim::New { record, previous } => (record, previous),
        };
        let undo = |e: IngestError| {
            self.records
                .restore(tenant, &id, previous.clone().map(|p| *p));
            self.uploads.drop(tenant, &id, record.version);
            e
        };
        if let Some(old) = self.running_token(tenant, &id) {
            old.cancel();
        }
        self.uploads
            .save(tenant, &id, record.version, &up.bytes)
            .map_err(undo)?;
        self.records.persist(&record).map_err(undo)?;
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

    /// Deletes a document: cancels its job, removes every chunk, then the record — so a
    /// failure leaves the record there to delete again, never chunks nobody can delete.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<DocumentRecord, IngestError> {
        if self.records.get(tenant, id).is_none() {
            return Err(IngestError::NotFound);
        }
        if let Some(t) = self.running_token(tenant, id) {
            t.cancel();
        }
        let _one_at_a_time = self.publishing.lock().await;
        let store = &self.retrieval.store;
        store
            .delete_document(tenant, id)
            .await
            .map_err(RetrievalError::from)?;
        store.flush().await.map_err(RetrievalError::from)?;
        let record = self
            .records
            .remove(tenant, id)
            .ok_or(IngestError::NotFound)?;
        self.uploads.drop(tenant, id, record.version);
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
            let r = self.records.get(tenant, id)?;
            if r.status.is_final() {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.records.get(tenant, id);
            }
        }
    }
}

impl From<&IngestError> for ErrorCode {
    fn from(e: &IngestError) -> Self {
        use IngestError as I;
        match e {
            I::TooLarge { .. } => ErrorCode::DocumentTooLarge,
            I::Unsupported(_) => ErrorCode::UnsupportedDocument,
            I::Parse(_) => ErrorCode::DocumentUnreadable,
            I::NotFound => ErrorCode::NotFound,
            I::Overloaded(_) => ErrorCode::Overloaded,
            I::Retrieval(r) => ErrorCode::from(r),
            I::Cancelled | I::Internal(_) => ErrorCode::Internal,
        }
    }
}
