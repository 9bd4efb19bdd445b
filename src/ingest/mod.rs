//! Document ingestion: upload → type check by content → background job (parse → chunk →
//! embed in parallel batches → upsert in batches, invisible until complete → publish).
//!
//! Uploads are answered at once with a `queued` record; jobs run through a bounded queue on
//! a few workers. The same bytes uploaded again are a no-op; a new upload under the same name
//! is a new version that replaces the old chunks only once it is fully indexed. A job cut by
//! a crash or shutdown runs again (its upload is kept until it ends): at the next start on
//! one node, or on another node within the lease in cluster mode, where records, uploads
//! and jobs live in Redis (`shared.rs`).

pub mod chunk;
pub mod detect;
mod jobs;
mod local;
pub mod parse;
mod records;
pub mod registry;
pub mod sandbox;
mod shared;
mod workers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::retrieval::{Retrieval, RetrievalError};

pub use chunk::{Chunk, Chunker};
pub use detect::DocKind;
pub use registry::{DocStatus, DocumentRecord};

use crate::cluster::{Cluster, JobEntry};
use crate::error::ErrorCode;
pub use records::Claim;
use records::Records;
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
    #[error(
        "uploads waiting for ingestion hold {held} bytes cluster-wide and this one does not fit \
         (cluster.upload_bytes = {limit}); try again later"
    )]
    UploadsFull { held: u64, limit: u64 },
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    #[error("the job was cancelled (the document was deleted or replaced)")]
    Cancelled,
    #[error("ingestion: {0}")]
    Internal(String),
    /// The shared store (cluster mode) cannot be reached, or is contended.
    #[error("document store: {0}")]
    Unavailable(String),
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
            job: uuid::Uuid::new_v4().simple().to_string(),
            trace: crate::telemetry::TraceParent::of(&tracing::Span::current()),
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

/// Parses interrupted by the server's death after which a job is failed, not run again.
const MAX_PARSE_ATTEMPTS: u32 = 2;

/// Nodes that may take one job and stop before finishing it (die, freeze) before the job is
/// failed rather than passed to another node: a poison document cannot take the cluster
/// down node after node.
const MAX_DELIVERIES: u64 = 3;

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
    records: Records,
    sandbox: sandbox::Sandbox,
    retrieval: Arc<Retrieval>,
    chunker: Arc<Chunker>,
    cfg: IngestConfig,
    /// Cancels the running job of a document when it is replaced or deleted through this
    /// node (other nodes' jobs notice when they renew their entry).
    /// By document: the version running here and its job's token.
    running: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
    /// Woken on every final state this node sees, for callers that wait.
    changed: Notify,
    /// Publishes and deletes on this node, one at a time (across nodes: the document lock).
    publishing: tokio::sync::Mutex<()>,
}

/// Where an ingestor keeps its documents and how its workers run.
pub struct IngestSetup<'a> {
    pub cfg: IngestConfig,
    /// Local records and uploads live under `<data_dir>/documents`.
    pub data_dir: &'a std::path::Path,
    pub tokenizer_json: &'a std::path::Path,
    /// Cluster mode: records, uploads and jobs in Redis, which holds at most `upload_bytes`
    /// of uploads waiting for their jobs.
    pub cluster: Option<(Arc<Cluster>, u64)>,
}

impl Ingestor {
    /// Opens the records (re-queuing a local node's interrupted jobs) and starts the workers
    /// on `tracker`; they stop when `stop` is cancelled.
    pub async fn start(
        retrieval: Arc<Retrieval>,
        setup: IngestSetup<'_>,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Self>, IngestError> {
        let cfg = setup.cfg;
        let sandbox = sandbox_of(&cfg)?;
        sandbox.probe().await?;
        let chunker = Chunker::new(setup.tokenizer_json, cfg.chunk_tokens, cfg.overlap_tokens)?;
        let (records, local) = match setup.cluster {
            Some((cluster, bytes)) => (workers::shared(cluster, &cfg, bytes), None),
            None => {
                let (records, rx, resume) = workers::local(setup.data_dir, &cfg)?;
                (records, Some((rx, resume)))
            }
        };
        let me = Arc::new(Self {
            records,
            sandbox,
            retrieval,
            chunker: Arc::new(chunker),
            cfg,
            running: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            publishing: tokio::sync::Mutex::new(()),
        });
        match local {
            Some((rx, resume)) => {
                for r in resume {
                    me.recover(r).await;
                }
                workers::spawn_local(&me, rx, stop, tracker);
            }
            None => workers::spawn_shared(&me, stop, tracker),
        }
        Ok(me)
    }

    /// A job found unfinished at a local start runs again if its upload was kept — unless
    /// its parse was interrupted twice (see [`Self::poisoned`]).
    async fn recover(&self, r: DocumentRecord) {
        let job = local::job_of(&r);
        if let Some(why) = poisoned(&r, &job) {
            self.fail_poisoned(&job, why).await;
            return;
        }
        let Records::Local(l) = &self.records else {
            return;
        };
        let kept = l.uploads.path(&r.tenant, &r.id, r.version).exists();
        if kept && l.queue.try_send(job).is_ok() {
            tracing::info!(doc = %r.id, version = r.version, "resuming an interrupted ingestion job");
            let _ = self
                .records
                .update(&r.tenant, &r.id, |r| {
                    r.status = DocStatus::Queued;
                    r.chunks_done = 0;
                })
                .await;
        } else {
            let _ = self
                .records
                .update(&r.tenant, &r.id, |r| {
                    r.status = DocStatus::Failed;
                    r.error = Some("interrupted by a restart, and the upload was not kept".into());
                })
                .await;
        }
    }

    /// Fails a job that keeps taking its server down, so it cannot keep a node (or node
    /// after node) in a crash loop.
    async fn fail_poisoned(&self, job: &JobEntry, why: &str) {
        tracing::warn!(doc = %job.id, deliveries = job.deliveries, why, "failing a job instead of running it again");
        let _ = self
            .records
            .update_job(job, |r| {
                r.status = DocStatus::Failed;
                r.error = Some(why.to_string());
                r.parse_attempts = 0;
            })
            .await;
        self.records.finish(job).await;
        crate::metrics::ingested("failed", 0);
        self.changed.notify_waiters();
    }

    /// The chunker (benchmarks and tests size chunks with it).
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<DocumentRecord>, IngestError> {
        self.records.get(tenant, id).await
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<DocumentRecord>, IngestError> {
        self.records.list(tenant).await
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
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{tenant}\u{1f}{}", upload.name).as_bytes(),
        )
        .to_string();
        match self.records.accept(&upload, &id).await? {
            Claim::Same(same) => {
                crate::metrics::ingested("unchanged", 0);
                Ok(same)
            }
            Claim::New(record) => {
                // The replaced version's job, if it runs here, stops at once (not the new
                // version's, which a worker may have taken already).
                if let Some((v, old)) = self.running_token(tenant, &id)
                    && v < record.version
                {
                    old.cancel();
                }
                Ok(record)
            }
        }
    }

    fn running_token(&self, tenant: &str, id: &str) -> Option<(u64, CancellationToken)> {
        let g = self.running.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&(tenant.to_string(), id.to_string())).cloned()
    }

    /// Runs `step` holding the document's lock: this node's publishing lock and, in cluster
    /// mode, the document's lock in Redis.
    async fn locked<T>(
        &self,
        tenant: &str,
        id: &str,
        step: impl std::future::Future<Output = Result<T, IngestError>>,
    ) -> Result<T, IngestError> {
        let _one_at_a_time = self.publishing.lock().await;
        let Records::Shared(s) = &self.records else {
            return step.await;
        };
        let token = s.lock(tenant, id).await?;
        let out = step.await;
        s.unlock(tenant, id, &token).await;
        out
    }

    /// Deletes a document: cancels its job, removes every chunk, then the record — so a
    /// failure leaves the record there to delete again, never chunks nobody can delete.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<DocumentRecord, IngestError> {
        if self.records.get(tenant, id).await?.is_none() {
            return Err(IngestError::NotFound);
        }
        if let Some((_, t)) = self.running_token(tenant, id) {
            t.cancel();
        }
        let record = self
            .locked(tenant, id, async {
                let store = &self.retrieval.store;
                store
                    .delete_document(tenant, id)
                    .await
                    .map_err(RetrievalError::from)?;
                store.flush().await.map_err(RetrievalError::from)?;
                self.records
                    .remove(tenant, id)
                    .await?
                    .ok_or(IngestError::NotFound)
            })
            .await?;
        self.retrieval.bump_version(tenant);
        self.changed.notify_waiters();
        Ok(record)
    }

    /// Waits until the document reaches a final state (or `timeout` passes) and returns it.
    /// In cluster mode another node may run the job: its record is read again every
    /// [`WAIT_POLL`].
    pub async fn wait(
        &self,
        tenant: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<DocumentRecord>, IngestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let poll = match self.records {
            Records::Local(_) => timeout,
            Records::Shared(_) => WAIT_POLL,
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(r) = self.records.get(tenant, id).await? else {
                return Ok(None);
            };
            if r.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(Some(r));
            }
            let next = deadline.min(tokio::time::Instant::now() + poll);
            let _ = tokio::time::timeout_at(next, notified).await;
        }
    }
}

/// How often a waiter in cluster mode reads a record another node may be changing.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// Why a job must not run again, if it must not: its parse was interrupted twice (the
/// server died in it both times), or nodes took it and stopped without finishing it too
/// often.
fn poisoned(r: &DocumentRecord, job: &JobEntry) -> Option<&'static str> {
    if r.parse_attempts >= MAX_PARSE_ATTEMPTS {
        return Some("interrupted the server twice while parsing; not run again");
    }
    if job.deliveries > MAX_DELIVERIES {
        return Some("taken by three nodes that stopped before finishing it; not run again");
    }
    None
}

impl From<&IngestError> for ErrorCode {
    fn from(e: &IngestError) -> Self {
        use IngestError as I;
        match e {
            I::TooLarge { .. } => ErrorCode::DocumentTooLarge,
            I::Unsupported(_) => ErrorCode::UnsupportedDocument,
            I::Parse(_) => ErrorCode::DocumentUnreadable,
            I::NotFound => ErrorCode::NotFound,
            I::Overloaded(_) | I::UploadsFull { .. } => ErrorCode::Overloaded,
            I::Retrieval(r) => ErrorCode::from(r),
            I::Unavailable(_) => ErrorCode::ClusterUnavailable,
            I::Cancelled | I::Internal(_) => ErrorCode::Internal,
        }
    }
}
