//! One attempt of one chain link: open the stream, enforce the link's timeouts, optionally
//! hold the first characters for a refusal check, and stream the rest into the room.

use std::time::Duration;

use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use super::chain::{Chain, Link};
use super::sink::TurnSink;
use crate::config::ms;
use crate::error::ErrorCode;
use crate::protocol::{AttemptOutcome, AttemptRecord};
use crate::providers::{ChatRequest, ProviderError, StreamEvent, UpstreamFinish};
use crate::rooms::QueuedTurn;

/// What the turn has streamed so far, across attempts.
#[derive(Default)]
pub struct Progress {
    pub first_token: Option<Instant>,
    /// When the last delta went out, for the inter-token gap metric.
    pub last_token: Option<Instant>,
    /// Deltas that reached clients; once non-zero the turn is committed to its model.
    pub deltas: u64,
    pub usage: Option<(u64, u64)>,
    pub attempts: Vec<AttemptRecord>,
    /// The text that reached clients.
    pub answer: String,
    /// Holds each unfinished word back until it can be checked for secrets.
    pub redactor: Option<crate::safety::Redactor>,
}

/// How one attempt ended.
pub enum AttemptEnd {
    Done(UpstreamFinish),
    Cancelled,
    /// Finished without text.
    Empty,
    /// Began with a refusal (nothing was shown).
    Refused,
    Failed {
        error: Option<ProviderError>,
        /// Set when the failure was a timeout, with its description.
        timeout_msg: Option<String>,
    },
}

impl AttemptEnd {
    /// The record clients see in `metrics.attempts`.
    pub fn record(&self, link: &Link, took: Duration) -> AttemptRecord {
        let (outcome, error, status) = match self {
            AttemptEnd::Done(_) => (AttemptOutcome::Ok, None, None),
            AttemptEnd::Cancelled => (AttemptOutcome::Cancelled, None, None),
            AttemptEnd::Empty => (AttemptOutcome::Empty, None, None),
            AttemptEnd::Refused => (AttemptOutcome::Refused, None, None),
            AttemptEnd::Failed {
                timeout_msg: Some(_),
                ..
            } => (
                AttemptOutcome::Timeout,
                Some(ErrorCode::UpstreamTimeout),
                None,
            ),
            AttemptEnd::Failed { error, .. } => (
                AttemptOutcome::Error,
                error.as_ref().map(ErrorCode::from),
                match error {
                    Some(ProviderError::Status { status, .. }) => Some(*status),
                    _ => None,
                },
            ),
        };
        record(link, outcome, took, error, status)
    }
}

/// Builds an attempt record.
pub fn record(
    link: &Link,
    outcome: AttemptOutcome,
    took: Duration,
    error: Option<ErrorCode>,
    status: Option<u16>,
) -> AttemptRecord {
    AttemptRecord {
        provider: link.name.clone(),
        model: link.provider.model().to_string(),
        outcome,
        duration_ms: took.as_millis() as u64,
        error,
        status,
    }
}

fn failed_timeout(msg: String) -> AttemptEnd {
    AttemptEnd::Failed {
        error: None,
        timeout_msg: Some(msg),
    }
}

fn is_refusal(text: &str, chain: &Chain) -> bool {
    let head = text.trim_start().to_lowercase();
    chain.refusal_patterns.iter().any(|p| head.starts_with(p))
}

/// Passes upstream text through the redactor, then on to clients.
fn release(room: &dyn TurnSink, turn: &QueuedTurn, progress: &mut Progress, text: String) {
    let text = match progress.redactor.as_mut() {
        Some(r) => r.push(&text),
        None => text,
    };
    if !text.is_empty() {
        emit(room, turn, progress, text);
    }
}

/// Releases the word the redactor still holds (the answer is complete).
fn flush(room: &dyn TurnSink, turn: &QueuedTurn, progress: &mut Progress) {
    let rest = progress
        .redactor
        .as_mut()
        .map(|r| r.finish())
        .unwrap_or_default();
    if !rest.is_empty() {
        emit(room, turn, progress, rest);
    }
}

fn emit(room: &dyn TurnSink, turn: &QueuedTurn, progress: &mut Progress, text: String) {
    let now = Instant::now();
    if progress.first_token.is_none() {
        progress.first_token = Some(now);
    }
    if let Some(prev) = progress.last_token.replace(now) {
        crate::metrics::inter_token(now.duration_since(prev));
    }
    progress.deltas += 1;
    progress.answer.push_str(&text);
    room.delta(turn.turn_id, text);
}

/// Runs one attempt against `link` within the turn's `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    room: &dyn TurnSink,
    turn: &QueuedTurn,
    link: &Link,
    request: &ChatRequest,
    cancel: &CancellationToken,
    deadline: Instant,
    probe: bool,
    chain: &Chain,
    progress: &mut Progress,
) -> AttemptEnd {
    let e = &link.entry;
    let start = Instant::now();
    // Words held from an earlier, failed attempt never reached anyone: drop them.
    if let Some(r) = progress.redactor.as_mut() {
        r.discard();
    }
    let attempt_deadline = (start + ms(e.total_timeout_ms)).min(deadline);
    let first_deadline = (start + ms(e.first_token_timeout_ms)).min(attempt_deadline);
    let first_msg = || {
        format!(
            "{}: no first token within {} ms",
            link.name, e.first_token_timeout_ms
        )
    };

    let opened = tokio::select! {
        biased;
        _ = cancel.cancelled() => return AttemptEnd::Cancelled,
        r = timeout_at(first_deadline, link.provider.stream(request)) => r,
    };
    let mut stream = match opened {
        Err(_) => return failed_timeout(first_msg()),
        Ok(Err(err)) => {
            return AttemptEnd::Failed {
                error: Some(err),
                timeout_msg: None,
            };
        }
        Ok(Ok(s)) => s,
    };
    let mut holding = probe;
    let mut held = String::new();
    let mut finish = None;
    loop {
        let limit = if progress.deltas == 0 {
            first_deadline
        } else {
            (Instant::now() + ms(e.idle_timeout_ms)).min(attempt_deadline)
        };
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return AttemptEnd::Cancelled,
            r = timeout_at(limit, stream.next()) => r,
        };
        match next {
            Err(_) if progress.deltas == 0 => return failed_timeout(first_msg()),
            Err(_) if limit >= attempt_deadline => {
                return failed_timeout(format!("{}: attempt exceeded its deadline", link.name));
            }
            Err(_) => {
                return failed_timeout(format!(
                    "{}: no token for {} ms",
                    link.name, e.idle_timeout_ms
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return AttemptEnd::Failed {
                    error: Some(err),
                    timeout_msg: None,
                };
            }
            Ok(Some(Ok(StreamEvent::Delta(text)))) => {
                if holding {
                    held.push_str(&text);
                    if held.chars().count() >= chain.refusal_probe_chars {
                        if is_refusal(&held, chain) {
                            return AttemptEnd::Refused;
                        }
                        holding = false;
                        release(room, turn, progress, std::mem::take(&mut held));
                    }
                } else {
                    release(room, turn, progress, text);
                }
            }
            Ok(Some(Ok(StreamEvent::Finish(f)))) => finish = Some(f),
            Ok(Some(Ok(StreamEvent::Usage { input, output }))) => {
                progress.usage = Some((input, output))
            }
        }
    }
    if holding && !held.is_empty() {
        if is_refusal(&held, chain) {
            return AttemptEnd::Refused;
        }
        release(room, turn, progress, held);
    }
    flush(room, turn, progress);
    if progress.deltas == 0 {
        return AttemptEnd::Empty;
    }
    AttemptEnd::Done(finish.unwrap_or(UpstreamFinish::Stop))
}
