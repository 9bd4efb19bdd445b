//! Document records on this machine: in memory, one concurrent map entry per tenant, and
//! mirrored to disk as one small JSON file per document (rewritten atomically on every state
//! change) next to the upload's bytes, which are kept until the job ends so a restart can
//! run it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::{DocKind, IngestError};

/// Where a document is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocStatus {
    Queued,
    Parsing,
    Embedding,
    Indexed,
    Failed,
}

impl DocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocStatus::Queued => "queued",
            DocStatus::Parsing => "parsing",
            DocStatus::Embedding => "embedding",
            DocStatus::Indexed => "indexed",
            DocStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, DocStatus::Indexed | DocStatus::Failed)
    }
}

/// One document of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// Derived from tenant and name: uploading a file of the same name again replaces it.
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub title: String,
    pub kind: DocKind,
    pub bytes: u64,
    pub sha256: String,
    /// Version being processed (or the last one processed).
    pub version: u64,
    pub status: DocStatus,
    /// The version searchable now, if any (an older one stays live until a new one is ready).
    pub live_version: Option<u64>,
    /// Chunks of the live version.
    pub chunks: u32,
    /// Progress of the current job.
    pub chunks_total: u32,
    pub chunks_done: u32,
    pub error: Option<String>,
    /// Parses of the current version begun and not yet ended: one left over at a start means
    /// the server died while parsing it (the crash-loop guard reads it).
    #[serde(default)]
    pub parse_attempts: u32,
    /// A token of the upload that queued the current version: a job runs, and writes the
    /// record, only while the record still carries its token (a job queued twice, or taken
    /// over from a node that froze, can tell the record is no longer its own).
    #[serde(default)]
    pub job: String,
    /// The trace context of the upload that queued the current version: its job's spans
    /// join the upload's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::telemetry::TraceParent>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tenant names may hold any character: their directories are named by a hash.
fn tenant_dir(root: &Path, tenant: &str) -> PathBuf {
    root.join(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, tenant.as_bytes()).to_string())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> IngestError {
    IngestError::Internal(format!("cannot {what} {}: {e}", path.display()))
}

/// Records in memory (by tenant, then id), mirrored to disk.
pub struct LocalRecords {
    root: PathBuf,
    tenants: DashMap<String, HashMap<String, DocumentRecord>>,
    /// Writes to disk one at a time, each of the record as it is in memory at that moment:
    /// two changes racing can never leave the older one on disk (nor two writers share the
    /// temporary file).
    disk: std::sync::Mutex<()>,
}

impl LocalRecords {
    /// Opens `root`, reading every record found there.
    pub fn open(root: PathBuf) -> Result<Self, IngestError> {
        std::fs::create_dir_all(&root).map_err(|e| io("create", &root, e))?;
        let tenants: DashMap<String, HashMap<String, DocumentRecord>> = DashMap::new();
        for dir in std::fs::read_dir(&root)
            .map_err(|e| io("read", &root, e))?
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for path in files.flatten().map(|f| f.path()) {
                if path.extension().is_some_and(|e| e == "json")
                    && let Some(r) = read_record(&path)
                {
                    tenants
                        .entry(r.tenant.clone())
                        .or_default()
                        .insert(r.id.clone(), r);
                }
            }
        }
        Ok(Self {
            root,
            tenants,
            disk: std::sync::Mutex::new(()),
        })
    }

    fn record_path(&self, tenant: &str, id: &str) -> PathBuf {
        tenant_dir(&self.root, tenant).join(format!("{id}.json"))
    }

    /// Writes the record as it is in memory now (temp file, synced, then rename: a crash
    /// leaves the old or the new one); a record removed meanwhile is not written back.
    fn write(&self, tenant: &str, id: &str) -> Result<(), IngestError> {
        let _one_writer = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = self.tenants.get(tenant).and_then(|t| t.get(id).cloned()) else {
            return Ok(());
        };
        let dir = tenant_dir(&self.root, &r.tenant);
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        let path = dir.join(format!("{}.json", r.id));
        let tmp = dir.join(format!("{}.json.tmp", r.id));
        let bytes = serde_json::to_vec_pretty(&r)
            .map_err(|e| IngestError::Internal(format!("record: {e}")))?;
        write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path).map_err(|e| io("write", &path, e))?;
        sync_dir(&dir)
    }
}

/// One record file; a file that cannot be read is skipped with a warning.
fn read_record(path: &Path) -> Option<DocumentRecord> {
    let parsed = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<DocumentRecord>(&b).map_err(|e| e.to_string()));
    match parsed {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping unreadable document record");
            None
        }
    }
}

/// What a local claim found: the same bytes, or a new record held in memory (persist it
/// next) with what it replaced, to restore if the upload is refused.
pub(super) enum Claimed {
    Same(DocumentRecord),
    New {
        record: DocumentRecord,
        previous: Option<Box<DocumentRecord>>,
    },
}

impl LocalRecords {
    pub(super) fn get(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        self.tenants.get(tenant)?.get(id).cloned()
    }

    pub(super) fn list(&self, tenant: &str) -> Vec<DocumentRecord> {
        self.tenants
            .get(tenant)
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn all(&self) -> Vec<DocumentRecord> {
        self.tenants
            .iter()
            .flat_map(|t| t.values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub(super) fn claim(
        &self,
        tenant: &str,
        id: &str,
        sha256: &str,
        make: &mut dyn FnMut(Option<&DocumentRecord>) -> DocumentRecord,
    ) -> Claimed {
        let mut records = self.tenants.entry(tenant.to_string()).or_default();
        if let Some(same) = records
            .values()
            .find(|r| r.sha256 == sha256 && r.status != DocStatus::Failed)
        {
            return Claimed::Same(same.clone());
        }
        let previous = records.get(id).cloned().map(Box::new);
        let record = make(previous.as_deref());
        records.insert(id.to_string(), record.clone());
        Claimed::New { record, previous }
    }

    pub(super) fn persist(&self, r: &DocumentRecord) -> Result<(), IngestError> {
        self.write(&r.tenant, &r.id)
    }

    pub(super) fn change(
        &self,
        tenant: &str,
        id: &str,
        persist: bool,
        f: &mut (dyn FnMut(&mut DocumentRecord) + Send),
    ) -> Result<Option<DocumentRecord>, IngestError> {
        let rec = {
            let Some(mut records) = self.tenants.get_mut(tenant) else {
                return Ok(None);
            };
            let Some(r) = records.get_mut(id) else {
                return Ok(None);
            };
            f(r);
            if !persist {
                return Ok(Some(r.clone()));
            }
            r.updated_ms = now_ms();
            r.clone()
        };
        self.write(tenant, id)?;
        Ok(Some(rec))
    }

    pub(super) fn remove(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        let _one_writer = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.tenants.get_mut(tenant)?.remove(id)?;
        let _ = std::fs::remove_file(self.record_path(tenant, id));
        Some(r)
    }

    pub(super) fn restore(&self, tenant: &str, id: &str, previous: Option<DocumentRecord>) {
        match previous {
            Some(p) => {
                self.tenants
                    .entry(tenant.to_string())
                    .or_default()
                    .insert(id.to_string(), p.clone());
                if let Err(e) = self.persist(&p) {
                    tracing::warn!(error = %e, "cannot restore a document record");
                }
            }
            None => {
                let _one_writer = self.disk.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(mut records) = self.tenants.get_mut(tenant) {
                    records.remove(id);
                }
                let _ = std::fs::remove_file(self.record_path(tenant, id));
            }
        }
    }
}

/// Writes `bytes` to `path` and syncs them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IngestError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| io("create", path, e))?;
    f.write_all(bytes).map_err(|e| io("write", path, e))?;
    f.sync_all().map_err(|e| io("sync", path, e))
}

/// Syncs a directory, so a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), IngestError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

/// The bytes of uploads whose jobs have not ended, on this machine's disk.
pub struct Uploads {
    root: PathBuf,
}

impl Uploads {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where the bytes of `version` are kept while its job runs.
    pub fn path(&self, tenant: &str, id: &str, version: u64) -> PathBuf {
        tenant_dir(&self.root, tenant).join(format!("{id}.v{version}.upload"))
    }

    /// Keeps the bytes durably (file and directory synced): the upload is answered 202 only
    /// after this and the record are on disk.
    pub fn save(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        bytes: &[u8],
    ) -> Result<(), IngestError> {
        let path = self.path(tenant, id, version);
        let dir = tenant_dir(&self.root, tenant);
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        write_synced(&path, bytes)?;
        sync_dir(&dir)
    }

    pub fn drop(&self, tenant: &str, id: &str, version: u64) {
        let _ = std::fs::remove_file(self.path(tenant, id, version));
    }
}
