//! One ingestion job: parse → chunk → embed in parallel batches → upsert pending chunks in
//! batches → publish. Parsing and chunking run on blocking threads; embedding goes through
//! the embedding service's bulk queue, behind user queries.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio_util::sync::CancellationToken;

use super::parse::Bounds;
use super::registry::{DocStatus, DocumentRecord};
use super::{Chunk, IngestError, Ingestor, JobRef};
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
    /// Runs a job to its end and records the outcome.
    pub(super) async fn process(&self, job: JobRef, stop: &CancellationToken) {
        let Some(rec) = self.records.get(&job.tenant, &job.id) else {
            self.uploads.drop(&job.tenant, &job.id, job.version);
            return; // deleted while queued
        };
        if rec.version != job.version {
            self.uploads.drop(&job.tenant, &job.id, job.version);
            return; // replaced while queued; the newer version has its own job
        }
        let key = (job.tenant.clone(), job.id.clone());
        let cancel = stop.child_token();
        {
            let mut g = self.running.lock().unwrap_or_else(|p| p.into_inner());
            g.insert(key.clone(), cancel.clone());
        }
        let t0 = Instant::now();
        let result = self.run(&job, &rec, &cancel).await;
        {
            let mut g = self.running.lock().unwrap_or_else(|p| p.into_inner());
            g.remove(&key);
        }
        crate::metrics::ingest_job(t0.elapsed());
        match result {
            Ok(chunks) => {
                crate::metrics::ingested("indexed", chunks);
                self.uploads.drop(&job.tenant, &job.id, job.version);
            }
            Err(_) if stop.is_cancelled() => {
                // Shutdown: the record stays unfinished and the upload stays, so the job runs
                // again at the next start.
                return;
            }
            Err(e) => {
                crate::metrics::ingested("failed", 0);
                if let Err(de) = self
                    .retrieval
                    .store
                    .delete_version(&job.tenant, &job.id, job.version)
                    .await
                {
                    tracing::warn!(error = %de, "cannot remove the chunks of a failed job");
                }
                // Cancelled: replaced by a newer version or deleted; nothing to record.
                if !matches!(e, IngestError::Cancelled) {
                    tracing::warn!(doc = %job.id, error = %e, "ingestion failed");
                    let _ = self.records.update(&job.tenant, &job.id, |r| {
                        if r.version == job.version {
                            r.status = DocStatus::Failed;
                            r.error = Some(e.to_string());
                        }
                    });
                }
                self.uploads.drop(&job.tenant, &job.id, job.version);
            }
        }
        self.changed.notify_waiters();
    }

    /// Changes the job's record while it is still the job's version.
    fn update(&self, job: &JobRef, f: impl FnOnce(&mut DocumentRecord)) -> Result<(), IngestError> {
        self.records
            .update_version(&job.tenant, &job.id, job.version, f)
            .map(|_| ())
    }

    async fn run(
        &self,
        job: &JobRef,
        rec: &DocumentRecord,
        cancel: &CancellationToken,
    ) -> Result<usize, IngestError> {
        self.update(job, |r| r.status = DocStatus::Parsing)?;
        let parsed = self.parse_and_chunk(job, rec, cancel).await?;
        if parsed.chunks.is_empty() {
            return Err(IngestError::Parse("the document has no text".into()));
        }
        let total = parsed.chunks.len();
        let title = parsed.title.clone();
        self.update(job, |r| {
            r.status = DocStatus::Embedding;
            r.title = title;
            r.chunks_total = total as u32;
            r.chunks_done = 0;
        })?;
        self.index(job, parsed, cancel).await?;
        if cancel.is_cancelled() {
            return Err(IngestError::Cancelled);
        }
        self.publish(job, total).await?;
        Ok(total)
    }

    /// Parses in the sandbox (the attempt recorded first, for the crash-loop guard), then
    /// chunks on a blocking thread, with each chunk's sparse vector.
    async fn parse_and_chunk(
        &self,
        job: &JobRef,
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
        self.update(job, |r| r.parse_attempts += 1)?;
        // Cancelled (deleted, replaced, shutdown): the child is killed as its future drops.
        let parsed = tokio::select! {
            p = self.sandbox.parse(kind, bytes, bounds) => p,
            _ = cancel.cancelled() => Err(IngestError::Cancelled),
        };
        self.update(job, |r| {
            r.parse_attempts = r.parse_attempts.saturating_sub(1)
        })?;
        let parsed = parsed?;
        let (chunker, retrieval) = (self.chunker.clone(), self.retrieval.clone());
        let (name, max_chunks) = (name.to_string(), self.cfg.max_chunks);
        tokio::task::spawn_blocking(move || {
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
        job: &JobRef,
        parsed: Parsed,
        cancel: &CancellationToken,
    ) -> Result<(), IngestError> {
        let mut sparse = parsed.sparse.into_iter();
        let mut pending: Vec<ChunkPoint> = Vec::new();
        let window = self.cfg.embed_batch * self.cfg.parallel_batches;
        let mut done = 0;
        for group in parsed.chunks.chunks(window) {
            if cancel.is_cancelled() {
                return Err(IngestError::Cancelled);
            }
            let vectors = self.embed_group(group).await?;
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
                self.upsert(std::mem::replace(&mut pending, rest)).await?;
            }
            done += group.len();
            self.records.touch(&job.tenant, &job.id, |r| {
                if r.version == job.version {
                    r.chunks_done = done as u32;
                }
            });
        }
        self.upsert(pending).await
    }

    /// The upload's bytes as stored, checked against the checksum recorded when it was
    /// accepted (a torn or replaced file is not indexed as if it were the upload).
    async fn stored_upload(&self, job: &JobRef, sha256: &str) -> Result<Vec<u8>, IngestError> {
        let path = self.uploads.path(&job.tenant, &job.id, job.version);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| IngestError::Internal(format!("cannot read the upload: {e}")))?;
        let (bytes, hex) = super::sha256_hex(bytes).await?;
        if hex != sha256 {
            return Err(IngestError::Internal(
                "the stored upload does not match its checksum; upload it again".into(),
            ));
        }
        Ok(bytes)
    }

    /// Makes the new version searchable (and the old one not), durably, and says so. Under
    /// the publish lock and only while the record is still at this version: an older job
    /// finishing late never replaces a newer version's chunks (publishing removes every
    /// other version's).
    async fn publish(&self, job: &JobRef, total: usize) -> Result<(), IngestError> {
        let _one_at_a_time = self.publishing.lock().await;
        match self.records.get(&job.tenant, &job.id) {
            Some(r) if r.version == job.version => {}
            _ => return Err(IngestError::Cancelled),
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

    async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IngestError> {
        self.retrieval
            .store
            .upsert(points)
            .await
            .map_err(|e| RetrievalError::from(e).into())
    }
}
