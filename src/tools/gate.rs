//! How many calls of one tool run at once (`max_concurrency`): a semaphore in the process,
//! or slots in Redis that every node shares under the Redis backend. A call waits for a
//! slot within its own timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::cluster::Cluster;

/// Where slots are kept.
pub enum Gates {
    Local(Mutex<HashMap<String, Arc<Semaphore>>>),
    Shared(Arc<Cluster>),
}

/// A slot held for one call; given back when dropped.
pub enum Slot {
    Local(#[allow(dead_code)] OwnedSemaphorePermit),
    Shared {
        cluster: Arc<Cluster>,
        tool: String,
        id: String,
    },
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Shared { cluster, tool, id } = self {
            let (cluster, tool, id) = (cluster.clone(), std::mem::take(tool), std::mem::take(id));
            // The slot's lease frees it anyway if this never reaches Redis.
            tokio::spawn(async move {
                if let Err(e) = cluster.tool_slot_give(&tool, &id).await {
                    tracing::debug!(%tool, error = %e, "tool slot left to expire");
                }
            });
        }
    }
}

/// Why no slot was had.
pub enum NoSlot {
    /// All were taken until the deadline.
    Busy,
    /// The shared store could not be asked.
    Unavailable(String),
}

/// How long a node waits between looks at a full tool's shared slots.
const POLL: Duration = Duration::from_millis(25);

impl Gates {
    pub fn new(cluster: Option<Arc<Cluster>>) -> Self {
        match cluster {
            Some(c) => Gates::Shared(c),
            None => Gates::Local(Mutex::new(HashMap::new())),
        }
    }

    /// One of `limit` slots of `tool`, waiting until `deadline` at most; a shared slot is
    /// leased for `lease` (the call's timeout: a node that dies frees it then).
    pub async fn take(
        &self,
        tool: &str,
        limit: u32,
        deadline: Instant,
        lease: Duration,
    ) -> Result<Slot, NoSlot> {
        match self {
            Gates::Local(map) => {
                let sem = {
                    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
                    m.entry(tool.to_string())
                        .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
                        .clone()
                };
                match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
                    Ok(Ok(p)) => Ok(Slot::Local(p)),
                    _ => Err(NoSlot::Busy),
                }
            }
            Gates::Shared(cluster) => shared(cluster, tool, limit, deadline, lease).await,
        }
    }
}

async fn shared(
    cluster: &Arc<Cluster>,
    tool: &str,
    limit: u32,
    deadline: Instant,
    lease: Duration,
) -> Result<Slot, NoSlot> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let lease_ms = lease.as_millis() as u64 + 1_000;
    loop {
        match cluster.tool_slot_take(tool, &id, limit, lease_ms).await {
            Ok(true) => {
                return Ok(Slot::Shared {
                    cluster: cluster.clone(),
                    tool: tool.to_string(),
                    id,
                });
            }
            Ok(false) => {}
            Err(e) => return Err(NoSlot::Unavailable(e.to_string())),
        }
        if Instant::now() + POLL >= deadline {
            return Err(NoSlot::Busy);
        }
        tokio::time::sleep(POLL).await;
    }
}
