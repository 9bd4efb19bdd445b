//! Generate: the fallback loop. Links are tried from the one routing chose; each may be
//! retried with backoff while nothing has reached clients; an open breaker skips a link;
//! the turn's deadline bounds it all. Once a delta went out, the turn is committed to its
//! link: a failure then ends the turn instead of moving on.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::TurnSink;
use super::attempt::{self, Attempt, AttemptEnd, Progress};
use super::chain::{Chain, Link};
use crate::error::ErrorCode;
use crate::protocol::{AttemptOutcome, FinishReason};
use crate::providers::{BreakerState, ChatRequest, ProviderError, UpstreamFinish};

/// Everything the loop needs to know about its turn.
pub(super) struct Generation<'a> {
    pub sink: &'a dyn TurnSink,
    pub turn_id: Uuid,
    pub chain: &'a Chain,
    /// Index of the first link to try (cheap-first routing).
    pub start: usize,
    pub request: &'a ChatRequest,
    /// The request's estimated prompt tokens (billing when usage is not reported).
    pub prompt_tokens: u64,
    pub cancel: CancellationToken,
    pub deadline: Instant,
    pub deadline_ms: u64,
    /// The tools are the client's: their call pieces go to the sink as they stream.
    pub forward_calls: bool,
}

/// How the turn ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Finished(UpstreamFinish),
    Cancelled,
    Failed(Failure),
}

impl Outcome {
    pub fn finish_reason(&self) -> FinishReason {
        match self {
            Outcome::Finished(UpstreamFinish::Stop) => FinishReason::Stop,
            Outcome::Finished(UpstreamFinish::Length) => FinishReason::Length,
            Outcome::Finished(UpstreamFinish::ToolCalls) => FinishReason::ToolCalls,
            Outcome::Cancelled => FinishReason::Cancelled,
            Outcome::Failed(_) => FinishReason::Error,
        }
    }
}

/// An error as the client will see it.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The failure of an attempt: its timeout, or its provider error.
    fn of_attempt(error: Option<&ProviderError>, timeout_msg: Option<String>) -> Self {
        match (timeout_msg, error) {
            (Some(msg), _) => Failure::new(ErrorCode::UpstreamTimeout, msg),
            (None, Some(e)) => Failure {
                code: ErrorCode::from(e),
                message: e.to_string(),
                retry_after: match e {
                    ProviderError::Status { retry_after, .. } => *retry_after,
                    _ => None,
                },
            },
            (None, None) => Failure::new(ErrorCode::Internal, "attempt failed"),
        }
    }
}

/// The loop's result: the outcome, the link tried last and what was streamed.
pub(super) struct Generated {
    pub outcome: Outcome,
    pub last: Option<Arc<Link>>,
    pub progress: Progress,
}

impl Generated {
    /// A complete answer from a model (not cut by length, not the extractive fallback).
    pub fn answered_by_model(&self) -> bool {
        matches!(self.outcome, Outcome::Finished(UpstreamFinish::Stop))
            && self.last.as_ref().is_some_and(|l| !l.is_extractive())
    }
}

/// How one link's tries ended.
enum LinkEnd {
    /// The turn is over (answered, cancelled, or failed after text went out).
    Final(Outcome),
    /// Move on to the next link; with the failure that made it give up, if any.
    Next(Option<Failure>),
    /// The turn's deadline passed: no link may be tried any more.
    Stop(Failure),
}

/// Runs the chain from `g.start` until a link answers or none is left.
pub(super) async fn run(g: &Generation<'_>, mut progress: Progress) -> Generated {
    let mut last = None;
    let mut last_failure = None;
    for (i, link) in g.chain.links.iter().enumerate().skip(g.start) {
        // The extractive fallback answers in plain text: not for a requested JSON format,
        // nor when the answer must be a tool call.
        let plain_only = g.request.sampling.wants_json() || g.request.tools.forces_call();
        if link.is_extractive() && plain_only {
            continue;
        }
        last = Some(link.clone());
        if !link.breaker.try_acquire() {
            tracing::debug!(target: crate::telemetry::EVENTS, provider = %link.name, "circuit_open");
            crate::metrics::provider_attempt(&link.name, "circuit_open");
            let rec = attempt::record(
                link,
                AttemptOutcome::CircuitOpen,
                Duration::ZERO,
                None,
                None,
            );
            progress.attempts.push(rec);
            continue;
        }
        match try_link(g, i, link, &mut progress).await {
            LinkEnd::Final(outcome) => {
                return Generated {
                    outcome,
                    last,
                    progress,
                };
            }
            LinkEnd::Next(failure) => last_failure = failure.or(last_failure),
            LinkEnd::Stop(failure) => {
                last_failure = Some(failure);
                break;
            }
        }
    }
    let failure = last_failure
        .unwrap_or_else(|| Failure::new(ErrorCode::Internal, "no link of the chain could answer"));
    Generated {
        outcome: Outcome::Failed(failure),
        last,
        progress,
    }
}

/// Tries one link, retrying while that may help and time allows.
async fn try_link(
    g: &Generation<'_>,
    index: usize,
    link: &Arc<Link>,
    progress: &mut Progress,
) -> LinkEnd {
    let a = Attempt {
        sink: g.sink,
        turn_id: g.turn_id,
        link,
        request: g.request,
        cancel: &g.cancel,
        deadline: g.deadline,
        refusal_probe: (g.chain.escalate_on_refusal && g.chain.has_stronger_after(index))
            .then_some(g.chain),
        prompt_tokens: g.prompt_tokens,
        forward_calls: g.forward_calls,
    };
    let mut retries = 0;
    loop {
        if Instant::now() >= g.deadline {
            link.breaker.release();
            let msg = format!("turn exceeded its {} ms deadline", g.deadline_ms);
            return LinkEnd::Stop(Failure::new(ErrorCode::UpstreamTimeout, msg));
        }
        let t0 = Instant::now();
        let span = super::trace::attempt_span(link, retries);
        let end = attempt::run(&a, progress).instrument(span).await;
        observe(link, &end, t0.elapsed(), progress);
        let (error, timeout_msg) = match end {
            AttemptEnd::Done(finish) => return LinkEnd::Final(Outcome::Finished(finish)),
            AttemptEnd::Cancelled => return LinkEnd::Final(Outcome::Cancelled),
            AttemptEnd::Empty | AttemptEnd::Refused => return fall_back(g, None),
            AttemptEnd::Failed { error, timeout_msg } => (error, timeout_msg),
        };
        let retryable = timeout_msg.is_none() && error.as_ref().is_some_and(retry_helps);
        let failure = Failure::of_attempt(error.as_ref(), timeout_msg);
        if progress.committed() {
            // Text or a tool call already reached clients: no silent switch to another model.
            return LinkEnd::Final(Outcome::Failed(failure));
        }
        let may_retry = retryable
            && link.breaker.state() == BreakerState::Closed
            && retries < link.entry.max_retries;
        if !may_retry {
            return fall_back(g, Some(failure));
        }
        let wait = failure
            .retry_after
            .unwrap_or_else(|| backoff(link, retries));
        if Instant::now() + wait >= g.deadline {
            return fall_back(g, Some(failure));
        }
        crate::metrics::provider_retry(&link.name);
        let wait_ms = wait.as_millis() as u64;
        tracing::debug!(target: crate::telemetry::EVENTS, provider = %link.name, wait_ms, error = %failure.message, "retry");
        tokio::select! {
            _ = g.cancel.cancelled() => return LinkEnd::Final(Outcome::Cancelled),
            _ = tokio::time::sleep(wait) => {}
        }
        retries += 1;
    }
}

/// Gives up on a link: counted as a fallback of the chain.
fn fall_back(g: &Generation<'_>, failure: Option<Failure>) -> LinkEnd {
    crate::metrics::provider_fallback(&g.chain.name);
    tracing::debug!(target: crate::telemetry::EVENTS, chain = %g.chain.name, "fallback");
    LinkEnd::Next(failure)
}

/// Feeds an attempt's end to the link's breaker, the metrics and the turn's attempt list.
fn observe(link: &Link, end: &AttemptEnd, took: Duration, progress: &mut Progress) {
    match end {
        AttemptEnd::Cancelled => link.breaker.release(),
        AttemptEnd::Done(_) | AttemptEnd::Empty | AttemptEnd::Refused => link.breaker.record(true),
        AttemptEnd::Failed { .. } => link.breaker.record(false),
    }
    let rec = end.record(link, took);
    crate::metrics::provider_attempt(&link.name, rec.outcome.as_str());
    if let Some(state) = link.breaker.exported_state() {
        crate::metrics::circuit_state(&link.name, state.as_metric());
    }
    progress.attempts.push(rec);
}

/// Before the first token, these failures may pass if the same link is asked again.
fn retry_helps(e: &ProviderError) -> bool {
    match e {
        ProviderError::Connect(_) | ProviderError::Transport(_) | ProviderError::Cut => true,
        ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
        ProviderError::Malformed(_) => false,
    }
}

/// Exponential backoff with equal jitter: half fixed, half random.
fn backoff(link: &Link, retries: u32) -> Duration {
    let exp = link
        .entry
        .backoff_base_ms
        .saturating_mul(1u64 << retries.min(16))
        .min(link.entry.backoff_max_ms);
    let half = exp / 2;
    Duration::from_millis(half + fastrand::u64(0..=half))
}
