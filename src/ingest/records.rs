//! Where document records, uploads and jobs live: on this machine (`local`: records on disk,
//! jobs in a bounded in-process queue) or in Redis (`shared`: every node reads the same
//! records, and any node's workers take the jobs). Every call is one atomic step on one
//! record, so ingestion reads the same either way.

use super::IngestError;
use super::Upload;
use super::local::LocalDocs;
use super::registry::DocumentRecord;
use super::shared::SharedDocs;
use crate::cluster::JobEntry;

/// What an upload's bytes turned out to be.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The tenant already has these bytes (indexed, or on their way).
    Same(DocumentRecord),
    /// A new document or a new version: stored with its upload, and its job queued.
    New(DocumentRecord),
}

/// The records of every tenant, and the queue of their jobs.
pub enum Records {
    Local(LocalDocs),
    Shared(SharedDocs),
}

impl Records {
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<DocumentRecord>, IngestError> {
        match self {
            Records::Local(l) => Ok(l.records.get(tenant, id)),
            Records::Shared(s) => s.get(tenant, id).await,
        }
    }

    /// The tenant's documents, newest first.
    pub async fn list(&self, tenant: &str) -> Result<Vec<DocumentRecord>, IngestError> {
        let mut v = match self {
            Records::Local(l) => l.records.list(tenant),
            Records::Shared(s) => s.list(tenant).await?,
        };
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.name.cmp(&b.name)));
        Ok(v)
    }

    /// Atomically: the tenant's live record with these bytes, or a new record (built from
    /// the one under `id`, if any) stored with the upload's bytes and its job queued.
    pub async fn accept(&self, up: &Upload<'_>, id: &str) -> Result<Claim, IngestError> {
        match self {
            Records::Local(l) => l.accept(up, id),
            Records::Shared(s) => s.accept(up, id).await,
        }
    }

    /// Changes a record, durably when `persist` (progress counters need not be); `None` if
    /// it no longer exists. `f` may run more than once (a shared store retries when another
    /// node changed the record meanwhile), each time on the record as it is then.
    pub async fn change(
        &self,
        tenant: &str,
        id: &str,
        persist: bool,
        f: &mut (dyn FnMut(&mut DocumentRecord) + Send),
    ) -> Result<Option<DocumentRecord>, IngestError> {
        match self {
            Records::Local(l) => l.records.change(tenant, id, persist, f),
            Records::Shared(s) => s.change(tenant, id, persist, f).await,
        }
    }

    /// Removes a record and its upload.
    pub async fn remove(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DocumentRecord>, IngestError> {
        match self {
            Records::Local(l) => Ok(l.remove(tenant, id)),
            Records::Shared(s) => s.remove(tenant, id).await,
        }
    }

    /// The bytes of a job's upload, as stored.
    pub async fn upload(&self, job: &JobEntry) -> Result<Vec<u8>, IngestError> {
        match self {
            Records::Local(l) => l.upload(job).await,
            Records::Shared(s) => s.upload(job).await,
        }
    }

    /// The job is over (indexed, failed, or no longer wanted): its upload and queue entry go.
    pub async fn finish(&self, job: &JobEntry) {
        match self {
            Records::Local(l) => l.uploads.drop(&job.tenant, &job.id, job.version),
            Records::Shared(s) => s.finish(job).await,
        }
    }

    /// The job was stopped by this node's shutdown: it runs again (local: at the next start;
    /// shared: on another node, at once).
    pub async fn stopped(&self, job: &JobEntry) {
        if let Records::Shared(s) = self {
            s.requeue(job).await;
        }
    }

    /// Changes a record and writes it durably.
    pub async fn update(
        &self,
        tenant: &str,
        id: &str,
        mut f: impl FnMut(&mut DocumentRecord) + Send,
    ) -> Result<Option<DocumentRecord>, IngestError> {
        self.change(tenant, id, true, &mut f).await
    }

    /// Changes the record durably only while it is still the job's (its version, queued by
    /// this upload, not ended): a job never writes over a newer upload's record, nor over
    /// its own once it ended. `Cancelled` when it is gone, newer or ended.
    pub async fn update_job(
        &self,
        job: &JobEntry,
        mut f: impl FnMut(&mut DocumentRecord) + Send,
    ) -> Result<DocumentRecord, IngestError> {
        // Set on each try (a shared store may apply the change again to a fresher record).
        let mut applied = false;
        let changed = self
            .change(&job.tenant, &job.id, true, &mut |r| {
                applied = is_job_of(r, job);
                if applied {
                    f(r)
                }
            })
            .await?;
        match changed {
            Some(r) if applied => Ok(r),
            other => {
                tracing::debug!(
                    doc = %job.id,
                    job = %job.nonce,
                    found = ?other.map(|r| (r.version, r.job)),
                    "the record is no longer this job's"
                );
                Err(IngestError::Cancelled)
            }
        }
    }

    /// Changes the job's record without syncing it (progress counters).
    pub async fn touch(&self, job: &JobEntry, mut f: impl FnMut(&mut DocumentRecord) + Send) {
        let _ = self
            .change(&job.tenant, &job.id, false, &mut |r| {
                if is_job_of(r, job) {
                    f(r)
                }
            })
            .await;
    }
}

/// Whether the record is still the one this job was queued for, and still open: once a job
/// has ended (indexed or failed, perhaps by a node that took it over from one that froze),
/// nothing of that job writes to the record again.
pub fn is_job_of(r: &DocumentRecord, job: &JobEntry) -> bool {
    r.version == job.version && r.job == job.nonce && !r.status.is_final()
}
