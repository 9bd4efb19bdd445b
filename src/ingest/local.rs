//! One node's documents: records and uploads on its disk, jobs in a bounded in-process queue
//! that its own workers drain. A job cut by a crash or shutdown runs again at the next start.

use tokio::sync::mpsc;

use super::records::Claim;
use super::registry::{Claimed, DocumentRecord, LocalRecords, Uploads};
use super::{IngestError, Upload};
use crate::cluster::JobEntry;

pub struct LocalDocs {
    pub records: LocalRecords,
    pub uploads: Uploads,
    pub queue: mpsc::Sender<JobEntry>,
}

impl LocalDocs {
    /// Claims the record, keeps the bytes, writes the record and queues the job, undoing
    /// the record and the bytes if any step fails (a full queue included).
    pub fn accept(&self, up: &Upload<'_>, id: &str) -> Result<Claim, IngestError> {
        let tenant = up.tenant;
        let claimed = self
            .records
            .claim(tenant, id, &up.sha256, &mut |prev| up.record(id, prev));
        let (record, previous) = match claimed {
            Claimed::Same(same) => return Ok(Claim::Same(same)),
            Claimed::New { record, previous } => (record, previous),
        };
        let undo = |e: IngestError| {
            self.records
                .restore(tenant, id, previous.clone().map(|p| *p));
            self.uploads.drop(tenant, id, record.version);
            e
        };
        self.uploads
            .save(tenant, id, record.version, &up.bytes)
            .map_err(undo)?;
        self.records.persist(&record).map_err(undo)?;
        if self.queue.try_send(job_of(&record)).is_err() {
            let waiting = self.queue.max_capacity() - self.queue.capacity();
            return Err(undo(IngestError::Overloaded(waiting)));
        }
        crate::metrics::ingest_queue(self.queue.max_capacity() - self.queue.capacity());
        Ok(Claim::New(record))
    }

    pub fn remove(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        let record = self.records.remove(tenant, id)?;
        self.uploads.drop(tenant, id, record.version);
        Some(record)
    }

    pub async fn upload(&self, job: &JobEntry) -> Result<Vec<u8>, IngestError> {
        let path = self.uploads.path(&job.tenant, &job.id, job.version);
        tokio::fs::read(&path)
            .await
            .map_err(|e| IngestError::Internal(format!("cannot read the upload: {e}")))
    }
}

/// The job of a record's current version (a local job has no queue entry of its own).
pub fn job_of(r: &DocumentRecord) -> JobEntry {
    JobEntry {
        entry: String::new(),
        tenant: r.tenant.clone(),
        id: r.id.clone(),
        version: r.version,
        nonce: r.job.clone(),
        deliveries: 1,
    }
}
