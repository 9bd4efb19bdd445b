//! One embedding worker thread: takes a micro-batch from the queues, runs the model, replies.

use std::sync::Arc;
use std::time::Duration;

use fastembed::TextEmbedding;

use super::{EmbedError, Job, Shared};

/// Runs until the service is dropped.
pub(super) fn run(mut model: TextEmbedding, shared: Arc<Shared>) {
    let wait = Duration::from_millis(shared.cfg.batch_wait_ms);
    loop {
        let Some(batch) = take_batch(&shared, wait) else {
            return;
        };
        let texts: Vec<&str> = batch
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let n = texts.len();
        let t0 = std::time::Instant::now();
        // fastembed or ONNX Runtime panicking must not kill the worker and strand callers.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.embed(&texts, Some(n))
        }));
        let result: Result<Vec<Vec<f32>>, EmbedError> = match result {
            Ok(Ok(v)) if v.len() == n => Ok(v),
            Ok(Ok(v)) => Err(EmbedError::Model(format!(
                "model returned {} vectors for {n} texts",
                v.len()
            ))),
            Ok(Err(e)) => Err(EmbedError::Model(e.to_string())),
            Err(_) => Err(EmbedError::Model("the model panicked".into())),
        };
        crate::metrics::embed_batch(n, t0.elapsed());
        reply(batch, result);
    }
}

fn reply(batch: Vec<Job>, result: Result<Vec<Vec<f32>>, EmbedError>) {
    match result {
        Ok(vectors) => {
            let mut it = vectors.into_iter();
            for job in batch {
                let mine: Vec<Vec<f32>> = it.by_ref().take(job.texts.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Blocks for the first job, then gathers more (queries first) up to the batch limits,
/// waiting at most `wait` for company when the batch is not full and holds bulk texts. A
/// batch of queries only never waits: a query is someone's prompt, and the wait would be
/// added to its answer (a semantic cache hit is mostly this embedding).
fn take_batch(shared: &Shared, wait: Duration) -> Option<Vec<Job>> {
    let cfg = &shared.cfg;
    let mut q = shared.lock();
    while q.query.is_empty() && q.bulk.is_empty() {
        if q.closed {
            return None;
        }
        q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
    }
    let mut batch = Vec::new();
    let (mut texts, mut tokens) = (0usize, 0usize);
    let (mut waited, mut bulk) = (false, false);
    loop {
        while let Some((job, is_bulk)) =
            next_fitting(&mut q, texts, tokens, cfg.max_batch, cfg.max_batch_tokens)
        {
            texts += job.texts.len();
            tokens += job.tokens;
            bulk |= is_bulk;
            batch.push(job);
        }
        let full = texts >= cfg.max_batch || tokens >= cfg.max_batch_tokens;
        if full || waited || !bulk || wait.is_zero() {
            crate::metrics::embed_queue(q.query_texts, q.bulk_texts);
            return Some(batch);
        }
        // Wait once, only as long as the oldest job in the batch can still afford.
        let age = batch
            .first()
            .map(|j| j.enqueued.elapsed())
            .unwrap_or_default();
        let Some(left) = wait.checked_sub(age) else {
            return Some(batch);
        };
        q = shared
            .ready
            .wait_timeout(q, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        waited = true;
    }
}

/// The next job that fits the batch (queries first), and whether it is bulk; an empty batch
/// takes anything.
fn next_fitting(
    q: &mut super::Queues,
    texts: usize,
    tokens: usize,
    max_texts: usize,
    max_tokens: usize,
) -> Option<(Job, bool)> {
    let fits = |j: &Job| {
        texts == 0 || (texts + j.texts.len() <= max_texts && tokens + j.tokens <= max_tokens)
    };
    if q.query.front().is_some_and(fits) {
        let job = q.query.pop_front()?;
        q.query_texts -= job.texts.len();
        return Some((job, false));
    }
    if q.query.is_empty() && q.bulk.front().is_some_and(fits) {
        let job = q.bulk.pop_front()?;
        q.bulk_texts -= job.texts.len();
        return Some((job, true));
    }
    None
}
