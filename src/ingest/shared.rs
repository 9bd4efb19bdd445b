//! Cluster mode's documents: records, uploads and jobs in Redis (`cluster/docs.rs`), so any
//! node answers for any document and any node's workers take any job.
//!
//! Each change reads the record, applies the pipeline's step in Rust and writes it back only
//! if nobody changed it meanwhile, retrying on a conflict. Uploads are kept in Redis until
//! their job ends, bounded cluster-wide: at most `cluster.upload_bytes` of them in all
//! (each at most `ingest.max_upload_bytes`) and `ingest.queue_capacity` jobs queued or
//! running; past either an upload is refused as `overloaded`, and nothing is lost.

use std::sync::Arc;

use super::records::Claim;
use super::registry::{DocStatus, DocumentRecord};
use super::{IngestError, Upload};
use crate::cluster::{Accepted, Cluster, ClusterError, JobEntry, NewUpload};

/// Attempts of one change when other nodes keep changing the same record.
const ATTEMPTS: usize = 16;

pub struct SharedDocs {
    pub cluster: Arc<Cluster>,
    /// Jobs queued or running, cluster-wide, before uploads are refused.
    pub max_jobs: usize,
    /// Bytes of uploads held for unfinished jobs, cluster-wide, before uploads are refused.
    pub max_bytes: u64,
}

fn store_down(e: ClusterError) -> IngestError {
    IngestError::Unavailable(e.to_string())
}

fn parse(json: &str) -> Result<DocumentRecord, IngestError> {
    serde_json::from_str(json).map_err(|e| IngestError::Internal(format!("a stored record: {e}")))
}

fn to_json(r: &DocumentRecord) -> Result<String, IngestError> {
    serde_json::to_string(r).map_err(|e| IngestError::Internal(format!("record: {e}")))
}

fn contended() -> IngestError {
    IngestError::Unavailable("the document kept changing on other nodes; try again".into())
}

impl SharedDocs {
    /// The record under `id`: the JSON as stored (what a compare-and-set compares) and parsed.
    async fn read(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, DocumentRecord)>, IngestError> {
        match self.cluster.doc_get(tenant, id).await.map_err(store_down)? {
            Some(json) => parse(&json).map(|r| Some((json, r))),
            None => Ok(None),
        }
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<DocumentRecord>, IngestError> {
        Ok(self.read(tenant, id).await?.map(|(_, r)| r))
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<DocumentRecord>, IngestError> {
        let all = self.cluster.doc_list(tenant).await.map_err(store_down)?;
        all.iter().map(|j| parse(j)).collect()
    }

    /// Reads what the upload depends on (the document holding these bytes, the record under
    /// `id`), decides, and stores record, bytes and job in one script that refuses if what
    /// was read changed meanwhile; then reads again.
    pub async fn accept(&self, up: &Upload<'_>, id: &str) -> Result<Claim, IngestError> {
        for _ in 0..ATTEMPTS {
            let (holder, held, prev) = self
                .cluster
                .doc_peek(up.tenant, id, &up.sha256)
                .await
                .map_err(store_down)?;
            if !held.is_empty() {
                let h = parse(&held)?;
                if h.sha256 == up.sha256 && h.status != DocStatus::Failed {
                    return Ok(Claim::Same(h));
                }
            }
            let previous = match prev.as_str() {
                "" => None,
                json => Some(parse(json)?),
            };
            let record = up.record(id, previous.as_ref());
            let json = to_json(&record)?;
            let new = NewUpload {
                tenant: up.tenant,
                id,
                sha256: &up.sha256,
                holder: &holder,
                previous: &prev,
                previous_sha: previous.as_ref().map_or("", |p| p.sha256.as_str()),
                record: &json,
                bytes: &up.bytes,
                version: record.version,
                nonce: &record.job,
                max_jobs: self.max_jobs,
                max_bytes: self.max_bytes,
            };
            match self.cluster.doc_accept(&new).await.map_err(store_down)? {
                Accepted::Stored(jobs) => {
                    crate::metrics::ingest_queue(jobs as usize);
                    return Ok(Claim::New(record));
                }
                Accepted::Full(n) => return Err(IngestError::Overloaded(n as usize)),
                Accepted::BytesFull(held) => {
                    return Err(IngestError::UploadsFull {
                        held,
                        limit: self.max_bytes,
                    });
                }
                Accepted::Stale => continue,
            }
        }
        Err(contended())
    }

    pub async fn change(
        &self,
        tenant: &str,
        id: &str,
        persist: bool,
        f: &mut (dyn FnMut(&mut DocumentRecord) + Send),
    ) -> Result<Option<DocumentRecord>, IngestError> {
        for _ in 0..ATTEMPTS {
            let Some((old, mut r)) = self.read(tenant, id).await? else {
                return Ok(None);
            };
            let before = r.clone();
            f(&mut r);
            if r == before {
                return Ok(Some(r));
            }
            if persist {
                r.updated_ms = super::registry::now_ms();
            }
            let new = to_json(&r)?;
            let swapped = self.cluster.doc_swap(tenant, id, &old, &new).await;
            if swapped.map_err(store_down)? {
                return Ok(Some(r));
            }
        }
        Err(contended())
    }

    pub async fn remove(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, IngestError> {
        for _ in 0..ATTEMPTS {
            let Some((old, r)) = self.read(tenant, id).await? else {
                return Ok(None);
            };
            let removed = self
                .cluster
                .doc_remove(tenant, id, &old, (&r.sha256, r.version));
            if removed.await.map_err(store_down)? {
                return Ok(Some(r));
            }
        }
        Err(contended())
    }

    pub async fn upload(&self, job: &JobEntry) -> Result<Vec<u8>, IngestError> {
        self.cluster
            .upload_get(&job.tenant, &job.id, job.version)
            .await
            .map_err(store_down)?
            .ok_or_else(|| IngestError::Internal("the upload is no longer stored".into()))
    }

    /// Best effort: an entry left behind is taken again after the lease and dropped then
    /// (its record no longer matches).
    pub async fn finish(&self, job: &JobEntry) {
        if let Err(e) = self.cluster.job_done(job).await {
            tracing::warn!(doc = %job.id, error = %e, "cannot close an ingestion job");
        }
    }

    /// Best effort: if it fails, another node takes the entry after the lease.
    pub async fn requeue(&self, job: &JobEntry) {
        match self.cluster.job_requeue(job).await {
            Ok(()) => tracing::info!(doc = %job.id, "handed an unfinished ingestion job back"),
            Err(e) => {
                tracing::warn!(doc = %job.id, error = %e, "cannot hand an ingestion job back")
            }
        }
    }
}

/// How long a publish or delete may hold a document's lock before it lapses (a node that
/// died holding it).
const LOCK_TTL_MS: u64 = 10_000;
/// How long a publish or delete waits for a document's lock.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

impl SharedDocs {
    /// Takes the document's lock across nodes: publishes and deletes of one document run
    /// one at a time, so a delete never lands between a publish's check and its write.
    pub async fn lock(&self, tenant: &str, id: &str) -> Result<String, IngestError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        loop {
            let taken = self.cluster.doc_lock(tenant, id, &token, LOCK_TTL_MS).await;
            if taken.map_err(store_down)? {
                return Ok(token);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IngestError::Unavailable(
                    "the document is being changed on another node; try again".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Best effort: a lock left behind lapses after its TTL.
    pub async fn unlock(&self, tenant: &str, id: &str, token: &str) {
        if let Err(e) = self.cluster.doc_unlock(tenant, id, token).await {
            tracing::warn!(doc = %id, error = %e, "cannot release a document lock");
        }
    }
}
