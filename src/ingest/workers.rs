//! The workers that run jobs: on one node they drain its in-process queue; in cluster mode
//! each node takes jobs from the shared stream as its workers free up, and renews each
//! running job's entry so that only a node that stopped has its jobs taken over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::local::LocalDocs;
use super::records::Records;
use super::shared::SharedDocs;
use super::{IngestError, Ingestor, LocalRecords, Uploads};
use crate::cluster::{Cluster, JobEntry, Renewed};
use crate::config::IngestConfig;

/// A local node's records, its queue, and the records of jobs a crash or shutdown cut.
pub fn local(
    data_dir: &std::path::Path,
    cfg: &IngestConfig,
) -> Result<
    (
        Records,
        mpsc::Receiver<JobEntry>,
        Vec<super::DocumentRecord>,
    ),
    IngestError,
> {
    let root = data_dir.join("documents");
    let records = LocalRecords::open(root.clone())?;
    let resume: Vec<_> = records
        .all()
        .into_iter()
        .filter(|r| !r.status.is_final())
        .collect();
    let (queue, rx) = mpsc::channel(cfg.queue_capacity.max(resume.len()));
    let docs = LocalDocs {
        records,
        uploads: Uploads::new(root),
        queue,
    };
    Ok((Records::Local(docs), rx, resume))
}

/// `workers` tasks draining the local queue until `stop`.
pub fn spawn_local(
    me: &Arc<Ingestor>,
    rx: mpsc::Receiver<JobEntry>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..me.cfg.workers {
        let (me, rx, stop) = (me.clone(), rx.clone(), stop.clone());
        tracker.spawn(async move {
            loop {
                let job = tokio::select! {
                    _ = stop.cancelled() => break,
                    job = async { rx.lock().await.recv().await } => job,
                };
                let Some(job) = job else { break };
                me.process(job, &stop, None).await;
            }
        });
    }
}

/// Cluster mode's records.
pub fn shared(cluster: Arc<Cluster>, cfg: &IngestConfig, max_bytes: u64) -> Records {
    Records::Shared(SharedDocs {
        cluster,
        max_jobs: cfg.queue_capacity,
        max_bytes,
    })
}

/// One task that takes a job from the shared stream whenever one of this node's `workers`
/// is free, and runs it on `tracker`, until `stop`.
pub fn spawn_shared(me: &Arc<Ingestor>, stop: CancellationToken, tracker: &TaskTracker) {
    let Records::Shared(s) = &me.records else {
        return;
    };
    let cluster = s.cluster.clone();
    let (me, jobs) = (me.clone(), tracker.clone());
    tracker.spawn(async move {
        let free = Arc::new(Semaphore::new(me.cfg.workers));
        // The entries this node runs now: never taken over by itself.
        let running: Arc<dashmap::DashSet<String>> = Arc::default();
        let mut failures = 0u32;
        // Redis may be away at boot: the loop makes the group again when reads fail.
        let _ = cluster.jobs_group().await;
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = free.clone().acquire_owned() => p,
            };
            let Ok(permit) = permit else { break };
            let idle_ms = cluster.lease.as_millis() as u64;
            let mine: Vec<String> = running.iter().map(|e| e.key().clone()).collect();
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                n = cluster.job_next(idle_ms, &mine) => n,
            };
            match next {
                Ok(Some(job)) => {
                    failures = 0;
                    if job.deliveries > 1 {
                        tracing::info!(doc = %job.id, deliveries = job.deliveries, "taking over an ingestion job whose node stopped");
                        crate::metrics::ingest_reclaimed();
                    }
                    let (me, cluster, stop) = (me.clone(), cluster.clone(), stop.clone());
                    let taken = Taken::new(&running, &job.entry);
                    jobs.spawn(async move {
                        // Both guards go with the task, even if the job panics: the renewal
                        // stops and the entry is no longer this node's to keep.
                        let _taken = taken;
                        let renewal = Renewal::start(cluster, job.clone(), &stop);
                        me.process(job, &stop, Some(&renewal)).await;
                        drop(permit);
                    });
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    // Also after Redis lost its data: the group is made again.
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot take ingestion jobs; retrying");
                    }
                    let _ = cluster.jobs_group().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
}

/// Keeps a running job's entry this node's, every third of the lease, and cancels the job
/// when its record was deleted or replaced, or when another node took the entry over (this
/// node froze past the lease): then `lost` tells the job the entry is no longer its own.
pub struct Renewal {
    pub cancel: CancellationToken,
    pub lost: Arc<AtomicBool>,
    cluster: Arc<Cluster>,
    job: JobEntry,
    task: tokio::task::JoinHandle<()>,
}

impl Renewal {
    fn start(cluster: Arc<Cluster>, job: JobEntry, stop: &CancellationToken) -> Self {
        let cancel = stop.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let every = cluster.lease / 3;
        let (c, j, cancel2, lost2) = (cluster.clone(), job.clone(), cancel.clone(), lost.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match c.job_renew(&j).await {
                    Ok(Renewed::Held) | Err(_) => continue,
                    Ok(Renewed::Lost) => {
                        tracing::warn!(doc = %j.id, "another node took this ingestion job over (this one renewed too late); stopping it here");
                        lost2.store(true, Ordering::Release);
                    }
                    Ok(Renewed::Gone) => {
                        tracing::info!(doc = %j.id, "the document was deleted or replaced; stopping its job");
                    }
                }
                cancel2.cancel();
                return;
            }
        });
        Self {
            cancel,
            lost,
            cluster,
            job,
            task,
        }
    }

    /// Checks now, before a step that must not happen once the entry is another node's.
    pub async fn still_held(&self) -> Result<bool, IngestError> {
        match self.cluster.job_renew(&self.job).await {
            Ok(Renewed::Held) => Ok(true),
            Ok(Renewed::Lost) => {
                self.lost.store(true, Ordering::Release);
                Ok(false)
            }
            Ok(Renewed::Gone) => Ok(false),
            Err(e) => Err(IngestError::Unavailable(e.to_string())),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An entry this node runs, listed while the guard lives (so the node never takes its own
/// running job over).
struct Taken {
    running: Arc<dashmap::DashSet<String>>,
    entry: String,
}

impl Taken {
    fn new(running: &Arc<dashmap::DashSet<String>>, entry: &str) -> Self {
        running.insert(entry.to_string());
        Self {
            running: running.clone(),
            entry: entry.to_string(),
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.running.remove(&self.entry);
    }
}
