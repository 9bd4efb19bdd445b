//! One ingestion job: parse → chunk → embed in parallel batches → upsert pending chunks in
//! batches → publish. Parsing and chunking run on blocking threads; embedding goes through
//! the embedding service's bulk queue, behind user queries.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::parse::Bounds;
use super::records::is_job_of;
use super::registry::{DocStatus, DocumentRecord};
use super::workers::Renewal;
use super::{Chunk, IngestError, Ingestor};
use crate::cluster::JobEntry;
use crate::embedding::{EmbedError, Priority};
use crate::retrieval::RetrievalError;
use crate::vector::ChunkPoint;

/// A parsed upload, chunked, with each chunk's sparse vector.
struct Parsed {
    title: String,
    chunks: Vec<Chunk>,
    sparse: Vec<crate::vector::SparseVec>,
}

/// How long a job keeps retrying an embedding queue that is full before it fails.
const OVERLOAD_PATIENCE: Duration = Duration::from_secs(120);

impl Ingestor {
    /// Runs a job to its end and records the outcome. `renewal`: cluster mode, where the
    /// job's entry is renewed while it runs and may be lost to another node.
    pub(super) async fn process(
        &self,
        job: JobEntry,
        stop: &CancellationToken,
        renewal: Option<&Renewal>,
    ) {
        let rec = match self.records.get(&job.tenant, &job.id).await {
            Ok(Some(r)) if is_job_of(&r, &job) => r,
            // Deleted or replaced while queued (the newer version has its own job), or
            // finished by a node that froze and came back.
            Ok(_) => return self.records.finish(&job).await,
            Err(e) => {
                // Cluster mode: the entry stays pending and is taken again after the lease.
                tracing::warn!(doc = %job.id, error = %e, "cannot start an ingestion job");
                return;
            }
        };
        if let Some(why) = super::poisoned(&rec, &job) {
            return self.fail_poisoned(&job, why).await;
        }
        let key = (job.tenant.clone(), job.id.clone());
        let cancel = renewal.map_or_else(|| stop.child_token(), |r| r.cancel.clone());
        {
            let mut g = self.running.lock().unwrap_or_else(|p| p.into_inner());
            g.insert(key.clone(), (job.version, cancel.clone()));
        }
        let t0 = Instant::now();
        let span = tracing::debug_span!("ingest", doc = %job.id, version = job.version);
        if let Some(tp) = &rec.trace {
            tp.adopt(&span);
        }
        let result = self
            .run(&job, &rec, &cancel, renewal)
            .instrument(span)
            .await;
        {
            let mut g = self.running.lock().unwrap_or_else(|p| p.into_inner());
            // Only this job's own entry: a newer version's job may have taken the key.
            if g.get(&key).is_some_and(|(v, _)| *v == job.version) {
                g.remove(&key);
            }
        }
        crate::metrics::ingest_job(t0.elapsed());
        match result {
            Ok(chunks) => {
                crate::metrics::ingested("indexed", chunks);
                self.records.finish(&job).await;
            }
            // Another node took the job over: its chunks, record and entry are its own now.
            Err(_) if renewal.is_some_and(Renewal::is_lost) => return,
            // Shutdown: the job runs again (next start, or another node), upload kept.
            Err(_) if stop.is_cancelled() => return self.records.stopped(&job).await,
            // Redis failed mid-job (cluster mode): not the document's fault. The entry stays
            // pending and is taken again once the lease has passed.
            Err(IngestError::Unavailable(e)) => {
                tracing::warn!(doc = %job.id, error = %e, "the document store failed during a job; it runs again after the lease");
                return;
            }
            Err(e) => self.failed(&job, e).await,
        }
        self.changed.notify_waiters();
    }

    /// A job that failed or was cancelled: its version's chunks go (unless that version is
    /// live: a node that took the job over published it), the record says why (unless it
    /// was replaced or deleted), and the job is over.
    async fn failed(&self, job: &JobEntry, e: IngestError) {
        crate::metrics::ingested("failed", 0);
        let live = match self.records.get(&job.tenant, &job.id).await {
            Ok(Some(r)) => r.live_version == Some(job.version),
            _ => false,
        };
        if !live
            && let Err(de) = self
                .retrieval
                .store
                .delete_version(&job.tenant, &job.id, job.version)
                .await
        {
            tracing::warn!(error = %de, "cannot remove the chunks of a failed job");
        }
        if matches!(e, IngestError::Cancelled) {
            tracing::debug!(doc = %job.id, version = job.version, "ingestion job cancelled");
        } else {
            tracing::warn!(doc = %job.id, error = %e, "ingestion failed");
            let why = e.to_string();
            let _ = self
                .records
                .update_job(job, |r| {
                    r.status = DocStatus::Failed;
                    r.error = Some(why.clone());
                })
                .await;
        }
        self.records.finish(job).await;
    }

    /// Changes the job's record while it is still the job's.
    async fn update(
        &self,
        job: &JobEntry,
        f: impl FnMut(&mut DocumentRecord) + Send,
    ) -> Result<(), IngestError> {
        self.records.update_job(job, f).await.map(|_| ())
    }

    async fn run(
        &self,
        job: &JobEntry,
        rec: &DocumentRecord,
        cancel: &CancellationToken,
        renewal: Option<&Renewal>,
    ) -> Result<usize, IngestError> {
        self.update(job, |r| r.status = DocStatus::Parsing).await?;
        let parsed = self.parse_and_chunk(job, rec, cancel).await?;
        if parsed.chunks.is_empty() {
            return Err(IngestError::Parse("the document has no text".into()));
        }
        let total = parsed.chunks.len();
        let title = parsed.title.clone();
        self.update(job, |r| {
            r.status = DocStatus::Embedding;
            r.title = title.clone();
            r.chunks_total = total as u32;
            r.chunks_done = 0;
        })
        .await?;
        self.index(job, parsed, cancel, renewal).await?;
        if cancel.is_cancelled() {
            return Err(IngestError::Cancelled);
        }
        self.publish(job, total, renewal)
            .instrument(tracing::debug_span!("publish", chunks = total))
            .await?;
        Ok(total)
    }

    /// Parses in the sandbox (the attempt recorded first, for the crash-loop guard), then
    /// chunks on a blocking thread, with each chunk's sparse vector.
    async fn parse_and_chunk(
        &self,
        job: &JobEntry,
        rec: &DocumentRecord,
        cancel: &CancellationToken,
    ) -> Result<Parsed, IngestError> {
        let bytes = self.stored_upload(job, &rec.sha256).await?;
        let (name, kind) = (rec.name.as_str(), rec.kind);
        let bounds = Bounds::for_upload(
            bytes.len(),
            self.cfg.max_text_ratio,
            self.cfg.max_inflate_ratio,
        );
        self.update(job, |r| r.parse_attempts += 1).await?;
        // Cancelled (deleted, replaced, shutdown): the child is killed as its future drops.
        let parse = self
            .sandbox
            .parse(kind, bytes, bounds)
            .instrument(tracing::debug_span!("parse"));
        let parsed = tokio::select! {
            p = parse => p,
            _ = cancel.cancelled() => Err(IngestError::Cancelled),
        };
        self.update(job, |r| {
            r.parse_attempts = r.parse_attempts.saturating_sub(1)
        })
        .await?;
        let parsed = parsed?;
        let (chunker, retrieval) = (self.chunker.clone(), self.retrieval.clone());
        let (name, max_chunks) = (name.to_string(), self.cfg.max_chunks);
        let chunking = tracing::debug_span!("chunk");
        tokio::task::spawn_blocking(move || {
            let _span = chunking.entered();
            let title = parsed.title.clone().unwrap_or(name);
            let chunks = chunker.chunk(&title, &parsed);
            if chunks.len() > max_chunks {
                return Err(IngestError::Parse(format!(
                    "the document makes {} chunks; the limit is {max_chunks} (ingest.max_chunks)",
                    chunks.len()
                )));
            }
            let sparse: Vec<_> = chunks
                .iter()
                .map(|c| retrieval.sparse_document(&c.indexed))
                .collect();
            Ok::<_, IngestError>(Parsed {
                title,
                chunks,
                sparse,
            })
        })
        .await
        .map_err(|e| IngestError::Internal(format!("chunking task failed: {e}")))?
    }

    /// Embeds in parallel batches and upserts the chunks as pending (invisible to search).
    async fn index(
        &self,
        job: &JobEntry,
        parsed: Parsed,
        cancel: &CancellationToken,
        renewal: Option<&Renewal>,
    ) -> Result<(), IngestError> {
        let mut sparse = parsed.sparse.into_iter();
        let mut pending: Vec<ChunkPoint> = Vec::new();
        let window = self.cfg.embed_batch * self.cfg.parallel_batches;
        let mut done = 0;
        for group in parsed.chunks.chunks(window) {
            if cancel.is_cancelled() {
                return Err(IngestError::Cancelled);
            }
            let embed = tracing::debug_span!("embed.batch", chunks = group.len());
            let vectors = self.embed_group(group).instrument(embed).await?;
            for (c, vector) in group.iter().zip(vectors) {
                pending.push(ChunkPoint {
                    tenant: job.tenant.clone(),
                    doc_id: job.id.clone(),
                    version: job.version,
                    chunk: c.index,
                    title: parsed.title.clone(),
                    section: c.section.clone(),
                    page: c.page,
                    text: c.text.clone(),
                    vector,
                    sparse: sparse.next().unwrap_or_default(),
                    pending: true,
                });
            }
            while pending.len() >= self.cfg.upsert_batch {
                let rest = pending.split_off(self.cfg.upsert_batch);
                let batch = std::mem::replace(&mut pending, rest);
                let upsert = tracing::debug_span!("upsert", chunks = batch.len());
                self.upsert(batch, renewal).instrument(upsert).await?;
            }
            done += group.len();
            self.records
                .touch(job, |r| r.chunks_done = done as u32)
                .await;
        }
        let upsert = tracing::debug_span!("upsert", chunks = pending.len());
        self.upsert(pending, renewal).instrument(upsert).await
    }

    /// The upload's bytes as stored, checked against the checksum recorded when it was
    /// accepted (a torn or replaced file is not indexed as if it were the upload).
    async fn stored_upload(&self, job: &JobEntry, sha256: &str) -> Result<Vec<u8>, IngestError> {
        let bytes = self.records.upload(job).await?;
        let (bytes, hex) = super::sha256_hex(bytes).await?;
        if hex != sha256 {
            return Err(IngestError::Internal(
                "the stored upload does not match its checksum; upload it again".into(),
            ));
        }
        Ok(bytes)
    }

    /// Makes the new version searchable (and the old one not), durably, and says so. Under
    /// the document's lock and only while the record is still this job's and not yet
    /// indexed (and, in cluster mode, while this node still holds the job): an older job
    /// finishing late never replaces a newer version's chunks (publishing removes every
    /// other version's), and a job is indexed once.
    async fn publish(
        &self,
        job: &JobEntry,
        total: usize,
        renewal: Option<&Renewal>,
    ) -> Result<(), IngestError> {
        self.locked(&job.tenant, &job.id, async {
            match self.records.get(&job.tenant, &job.id).await? {
                Some(r) if is_job_of(&r, job) => {}
                _ => return Err(IngestError::Cancelled),
            }
            if let Some(renewal) = renewal
                && !renewal.still_held().await?
            {
                return Err(IngestError::Cancelled);
            }
            let store = &self.retrieval.store;
            store
                .publish(&job.tenant, &job.id, job.version)
                .await
                .map_err(RetrievalError::from)?;
            store.flush().await.map_err(RetrievalError::from)?;
            self.retrieval.bump_version(&job.tenant);
            self.update(job, |r| {
                r.status = DocStatus::Indexed;
                r.live_version = Some(job.version);
                r.chunks = total as u32;
                r.chunks_done = total as u32;
                r.error = None;
            })
            .await
        })
        .await
    }

    /// Embeds a window of chunks as `parallel_batches` concurrent requests, waiting politely
    /// when the embedding queue is full.
    async fn embed_group(&self, group: &[Chunk]) -> Result<Vec<Vec<f32>>, IngestError> {
        let started = Instant::now();
        loop {
            let batches = group.chunks(self.cfg.embed_batch).map(|b| {
                self.retrieval.embedder.embed(
                    b.iter().map(|c| c.indexed.clone()).collect(),
                    Priority::Bulk,
                )
            });
            match try_join_all(batches).await {
                Ok(v) => return Ok(v.into_iter().flatten().collect()),
                Err(EmbedError::Overloaded(_)) if started.elapsed() < OVERLOAD_PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(RetrievalError::from(e).into()),
            }
        }
    }

    /// Writes pending chunks — in cluster mode only while this node still holds the job: a
    /// node that froze past the lease and woke must not write over the chunks of the node
    /// that took its job over (and may have published them).
    async fn upsert(
        &self,
        points: Vec<ChunkPoint>,
        renewal: Option<&Renewal>,
    ) -> Result<(), IngestError> {
        if let Some(r) = renewal
            && !r.still_held().await?
        {
            return Err(IngestError::Cancelled);
        }
        self.retrieval
            .store
            .upsert(points)
            .await
            .map_err(|e| RetrievalError::from(e).into())
    }
}
