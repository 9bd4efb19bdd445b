//! The embedding service: model instances owned by dedicated worker threads, fed through a
//! bounded two-priority queue behind a cheap async handle.
//!
//! Queries jump ahead of bulk ingestion; concurrent requests are micro-batched (up to
//! `max_batch` texts / `max_batch_tokens`; a batch with bulk texts waits at most
//! `batch_wait_ms` for company, one of queries only never waits); a
//! full queue answers `overloaded` at once instead of queueing without bound.

mod model;
mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::config::EmbeddingConfig;

pub use model::ModelFiles;

/// Why an embedding request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model assets: {0}")]
    Assets(String),
    #[error("embedding queue is full ({0} texts waiting); try again later")]
    Overloaded(usize),
    #[error("embedding failed: {0}")]
    Model(String),
    #[error("embedding service stopped")]
    Stopped,
}

/// Query texts (a user waits on them) go before bulk texts (ingestion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Query,
    Bulk,
}

struct Job {
    texts: Vec<String>,
    /// Estimated tokens, for the batch budget.
    tokens: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

#[derive(Default)]
struct Queues {
    query: VecDeque<Job>,
    bulk: VecDeque<Job>,
    query_texts: usize,
    bulk_texts: usize,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    cfg: EmbeddingConfig,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cheap to clone; dropping the last handle stops the workers.
#[derive(Clone)]
pub struct Embedder {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// A rough token count (≈ 4 characters a token), enough to budget batches.
fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(4).max(1)
}

impl Embedder {
    /// Loads the model (one instance per worker) and starts the workers. Fails with a clear
    /// message when the model files or ONNX Runtime are missing or broken.
    pub fn start(cfg: &EmbeddingConfig) -> Result<Self, EmbedError> {
        let files = ModelFiles::read(cfg)?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            cfg: cfg.clone(),
        });
        for i in 0..cfg.workers {
            let model = files.instance(cfg)?;
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("embed-{i}"))
                .spawn(move || worker::run(model, s))
                .map_err(|e| EmbedError::Model(format!("cannot start worker thread: {e}")))?;
        }
        tracing::info!(workers = cfg.workers, model_dir = %cfg.model_dir.display(), "embedding service ready");
        Ok(Self {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.shared.cfg.dim
    }

    /// Embeds one query, ahead of any bulk work.
    pub async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut v = self
            .submit(vec![text.to_string()], Priority::Query)?
            .await??;
        v.pop()
            .ok_or(EmbedError::Model("no vector returned".into()))
    }

    /// Embeds many texts; split into `max_batch` pieces so queries can overtake them.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let max = self.shared.cfg.max_batch;
        let mut waits = Vec::new();
        let mut rest = texts;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(max));
            waits.push(self.submit(rest, priority)?);
            rest = tail;
        }
        let mut out = Vec::new();
        for w in waits {
            out.extend(w.await??);
        }
        Ok(out)
    }

    fn submit(&self, texts: Vec<String>, priority: Priority) -> Result<Wait, EmbedError> {
        let (tx, rx) = oneshot::channel();
        let tokens = texts.iter().map(|t| estimate_tokens(t)).sum();
        let n = texts.len();
        let mut q = self.shared.lock();
        if q.closed {
            return Err(EmbedError::Stopped);
        }
        let job = Job {
            texts,
            tokens,
            enqueued: Instant::now(),
            reply: tx,
        };
        match priority {
            Priority::Query => {
                if q.query_texts + n > self.shared.cfg.query_queue_capacity {
                    return Err(EmbedError::Overloaded(q.query_texts));
                }
                q.query_texts += n;
                q.query.push_back(job);
            }
            Priority::Bulk => {
                if q.bulk_texts > 0 && q.bulk_texts + n > self.shared.cfg.queue_capacity {
                    return Err(EmbedError::Overloaded(q.bulk_texts));
                }
                q.bulk_texts += n;
                q.bulk.push_back(job);
            }
        }
        crate::metrics::embed_queue(q.query_texts, q.bulk_texts);
        drop(q);
        self.shared.ready.notify_one();
        Ok(Wait(rx))
    }
}

/// A pending reply.
struct Wait(oneshot::Receiver<Result<Vec<Vec<f32>>, EmbedError>>);

impl std::future::IntoFuture for Wait {
    type Output = Result<Result<Vec<Vec<f32>>, EmbedError>, EmbedError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.await.map_err(|_| EmbedError::Stopped) })
    }
}
