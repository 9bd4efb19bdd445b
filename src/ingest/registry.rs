//! Document records: what was uploaded, its state and progress. Each record is a small JSON
//! file (rewritten atomically on every state change) next to the upload's bytes, which are
//! kept until the job ends so a restart can run it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

type Key = (String, String);

/// Records in memory, mirrored to disk.
pub struct Registry {
    root: PathBuf,
    records: Mutex<HashMap<Key, DocumentRecord>>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> IngestError {
    IngestError::Internal(format!("cannot {what} {}: {e}", path.display()))
}

impl Registry {
    /// Opens `root`, reading every record found there.
    pub fn open(root: PathBuf) -> Result<Self, IngestError> {
        std::fs::create_dir_all(&root).map_err(|e| io("create", &root, e))?;
        let mut records = HashMap::new();
        for dir in std::fs::read_dir(&root)
            .map_err(|e| io("read", &root, e))?
            .flatten()
        {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "json") {
                    match std::fs::read(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            serde_json::from_slice::<DocumentRecord>(&b).map_err(|e| e.to_string())
                        }) {
                        Ok(r) => {
                            records.insert((r.tenant.clone(), r.id.clone()), r);
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "skipping unreadable document record")
                        }
                    }
                }
            }
        }
        Ok(Self {
            root,
            records: Mutex::new(records),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, DocumentRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        self.lock()
            .get(&(tenant.to_string(), id.to_string()))
            .cloned()
    }

    /// The tenant's documents, newest first.
    pub fn list(&self, tenant: &str) -> Vec<DocumentRecord> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter(|r| r.tenant == tenant)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.name.cmp(&b.name)));
        v
    }

    /// Every record (recovery at start).
    pub fn all(&self) -> Vec<DocumentRecord> {
        self.lock().values().cloned().collect()
    }

    /// Runs `f` on the records under the lock (check-then-insert without a race).
    pub fn with<T>(&self, f: impl FnOnce(&mut HashMap<Key, DocumentRecord>) -> T) -> T {
        f(&mut self.lock())
    }

    /// Changes a record in memory only (progress counters).
    pub fn touch(&self, tenant: &str, id: &str, f: impl FnOnce(&mut DocumentRecord)) {
        if let Some(r) = self.lock().get_mut(&(tenant.to_string(), id.to_string())) {
            f(r);
        }
    }

    /// Changes a record and writes it to disk; `None` if it no longer exists (deleted).
    pub fn update(
        &self,
        tenant: &str,
        id: &str,
        f: impl FnOnce(&mut DocumentRecord),
    ) -> Result<Option<DocumentRecord>, IngestError> {
        let rec = {
            let mut g = self.lock();
            let Some(r) = g.get_mut(&(tenant.to_string(), id.to_string())) else {
                return Ok(None);
            };
            f(r);
            r.updated_ms = now_ms();
            r.clone()
        };
        self.persist(&rec)?;
        Ok(Some(rec))
    }

    /// Writes a record (temp file, then rename: a crash leaves the old or the new one).
    pub fn persist(&self, r: &DocumentRecord) -> Result<(), IngestError> {
        let dir = tenant_dir(&self.root, &r.tenant);
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        let path = dir.join(format!("{}.json", r.id));
        let tmp = dir.join(format!("{}.json.tmp", r.id));
        let bytes = serde_json::to_vec_pretty(r)
            .map_err(|e| IngestError::Internal(format!("record: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(|e| io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("write", &path, e))
    }

    /// Removes a record and its files.
    pub fn remove(&self, tenant: &str, id: &str) -> Option<DocumentRecord> {
        let r = self.lock().remove(&(tenant.to_string(), id.to_string()))?;
        let dir = tenant_dir(&self.root, tenant);
        let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
        self.drop_upload(tenant, id, r.version);
        Some(r)
    }

    /// Puts back what a refused upload replaced: the previous record, or nothing.
    pub fn restore(&self, tenant: &str, id: &str, previous: Option<DocumentRecord>) {
        match previous {
            Some(p) => {
                self.lock()
                    .insert((tenant.to_string(), id.to_string()), p.clone());
                if let Err(e) = self.persist(&p) {
                    tracing::warn!(error = %e, "cannot restore a document record");
                }
            }
            None => {
                self.lock().remove(&(tenant.to_string(), id.to_string()));
                let _ =
                    std::fs::remove_file(tenant_dir(&self.root, tenant).join(format!("{id}.json")));
            }
        }
    }

    /// Where the bytes of `version` are kept while its job runs.
    pub fn upload_path(&self, tenant: &str, id: &str, version: u64) -> PathBuf {
        tenant_dir(&self.root, tenant).join(format!("{id}.v{version}.upload"))
    }

    pub fn save_upload(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
        bytes: &[u8],
    ) -> Result<(), IngestError> {
        let path = self.upload_path(tenant, id, version);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io("write", &path, e))
    }

    pub fn drop_upload(&self, tenant: &str, id: &str, version: u64) {
        let _ = std::fs::remove_file(self.upload_path(tenant, id, version));
    }
}
