//! Where document records live: what was uploaded, its versions, status and progress.
//! Every call is one atomic step on one record (or, for [`RecordStore::claim`], on one
//! tenant's records), so a shared store can replace this machine's own without changing
//! ingestion.

use super::IngestError;
use super::registry::DocumentRecord;

/// What an upload's bytes turned out to be.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The tenant already has these bytes (indexed, or on their way).
    Same(DocumentRecord),
    /// A new document or a new version, held in the store (persist it next), with what it
    /// replaced, to restore if the upload is refused.
    New {
        record: DocumentRecord,
        previous: Option<Box<DocumentRecord>>,
    },
}

/// The records of every tenant.
pub trait RecordStore: Send + Sync {
    fn get(&self, tenant: &str, id: &str) -> Option<DocumentRecord>;
    /// The tenant's documents, newest first.
    fn list(&self, tenant: &str) -> Vec<DocumentRecord>;
    /// Every record (recovery at start).
    fn all(&self) -> Vec<DocumentRecord>;
    /// Atomically: the tenant's live record with these bytes, or the record `make` builds
    /// from the one under `id` (if any), stored in its place.
    fn claim(
        &self,
        tenant: &str,
        id: &str,
        sha256: &str,
        make: &mut dyn FnMut(Option<&DocumentRecord>) -> DocumentRecord,
    ) -> Claim;
    /// Writes a record durably (a crash leaves the old or the new one).
    fn persist(&self, r: &DocumentRecord) -> Result<(), IngestError>;
    /// Changes a record, durably when `persist` (progress counters need not be); `None`
    /// if it no longer exists (deleted).
    fn change(
        &self,
        tenant: &str,
        id: &str,
        persist: bool,
        f: &mut dyn FnMut(&mut DocumentRecord),
    ) -> Result<Option<DocumentRecord>, IngestError>;
    /// Removes a record.
    fn remove(&self, tenant: &str, id: &str) -> Option<DocumentRecord>;
    /// Puts back what a refused upload replaced: the previous record, or nothing.
    fn restore(&self, tenant: &str, id: &str, previous: Option<DocumentRecord>);
}

impl dyn RecordStore {
    /// Changes a record and writes it durably.
    pub fn update(
        &self,
        tenant: &str,
        id: &str,
        f: impl FnOnce(&mut DocumentRecord),
    ) -> Result<Option<DocumentRecord>, IngestError> {
        let mut f = Some(f);
        self.change(tenant, id, true, &mut |r| {
            if let Some(f) = f.take() {
                f(r)
            }
        })
    }

    /// Changes the record durably only while it is still at `version`: a job never writes
    /// over a newer upload's record. `Cancelled` when it is gone or newer.
    pub fn update_version(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        f: impl FnOnce(&mut DocumentRecord),
    ) -> Result<DocumentRecord, IngestError> {
        let mut f = Some(f);
        let changed = self.change(tenant, id, true, &mut |r| {
            if r.version == version
                && let Some(f) = f.take()
            {
                f(r)
            }
        })?;
        match changed {
            Some(r) if r.version == version => Ok(r),
            _ => Err(IngestError::Cancelled),
        }
    }

    /// Changes a record in memory only (progress counters).
    pub fn touch(&self, tenant: &str, id: &str, f: impl FnOnce(&mut DocumentRecord)) {
        let mut f = Some(f);
        let _ = self.change(tenant, id, false, &mut |r| {
            if let Some(f) = f.take() {
                f(r)
            }
        });
    }
}
