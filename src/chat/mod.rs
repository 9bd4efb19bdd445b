//! A chat turn: build the conversation, route it to a chain, stream the answer into the room,
//! and end the turn exactly once whatever happens (stop, length, cancel, timeout, failure).
//!
//! Fallback happens only before the first token reaches clients: retries with backoff, then
//! the next link. After that, a failure ends the turn with `error` + `end(error)` and the
//! partial answer is kept.

mod attempt;
pub mod chain;
mod prompt;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use self::attempt::{AttemptEnd, Progress};
use self::chain::{Link, Models, RouteInput};
use crate::config::{TurnConfig, ms};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::{AttemptOutcome, EventBody, FinishReason, TurnMetrics};
use crate::providers::{BreakerState, ProviderError, Source, UpstreamFinish};
use crate::retrieval::Retrieval;
use crate::rooms::{QueuedTurn, Room};

/// Runs turns through the configured fallback chains.
pub struct TurnEngine {
    models: Models,
    cfg: TurnConfig,
    retrieval: Option<Arc<Retrieval>>,
}

/// How the turn ended.
enum Outcome {
    Finished(UpstreamFinish),
    Cancelled,
    Failed(Failure),
}

/// An error as the client will see it.
#[derive(Debug, Clone)]
struct Failure {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn from_provider(e: &ProviderError) -> Self {
        Failure {
            code: ErrorCode::from(e),
            message: e.to_string(),
            retry_after: match e {
                ProviderError::Status { retry_after, .. } => *retry_after,
                _ => None,
            },
        }
    }
}

impl TurnEngine {
    pub fn new(models: Models, cfg: TurnConfig, retrieval: Option<Arc<Retrieval>>) -> Self {
        Self {
            models,
            cfg,
            retrieval,
        }
    }

    /// Searches the tenant's documents for the turn; a failure is reported in the `tool`
    /// event and the turn goes on without sources.
    async fn retrieve(
        &self,
        room: &Room,
        history: &[crate::protocol::TurnSnapshot],
        turn: &QueuedTurn,
    ) -> (Vec<Source>, Option<EventBody>) {
        let Some(r) = &self.retrieval else {
            return (Vec::new(), None);
        };
        let query = prompt::retrieval_query(history, &turn.prompt, r.cfg.short_prompt_words);
        let t0 = Instant::now();
        let input = serde_json::json!({ "query": query, "top_k": r.cfg.top_k });
        match r
            .search(&room.key.tenant, &query, r.cfg.top_k, r.cfg.score_floor)
            .await
        {
            Ok(found) => {
                let sources: Vec<Source> = found
                    .hits
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| Source {
                        n: i + 1,
                        doc_id: h.doc_id,
                        title: h.title,
                        chunk: h.chunk,
                        text: h.text,
                        score: h.score,
                    })
                    .collect();
                let results: Vec<_> = sources
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "n": s.n, "doc_id": s.doc_id, "title": s.title, "chunk": s.chunk,
                            "score": s.score, "snippet": s.text.chars().take(300).collect::<String>(),
                        })
                    })
                    .collect();
                let tool = EventBody::Tool {
                    name: "search_documents".into(),
                    input,
                    output: serde_json::json!({
                        "results": results,
                        "dropped_duplicates": found.dropped_duplicates,
                    }),
                    duration_ms: found.took.as_millis() as u64,
                };
                (sources, Some(tool))
            }
            Err(e) => {
                tracing::warn!(error = %e, "retrieval failed; answering without sources");
                let tool = EventBody::Tool {
                    name: "search_documents".into(),
                    input,
                    output: serde_json::json!({
                        "error": { "code": ErrorCode::from(&e).as_str(), "message": e.to_string() },
                        "results": [],
                    }),
                    duration_ms: t0.elapsed().as_millis() as u64,
                };
                (Vec::new(), Some(tool))
            }
        }
    }

    /// Runs one turn to its single `end` event.
    pub async fn run(&self, room: &Room, turn: QueuedTurn, life: &Lifecycle) {
        if life.is_draining() {
            room.reject_turn(
                turn.turn_id,
                ErrorCode::ShuttingDown,
                "server is shutting down; send the prompt again after reconnecting".into(),
            );
            return;
        }
        let Some(chain) = self.models.chain(&self.cfg.chain) else {
            room.reject_turn(
                turn.turn_id,
                ErrorCode::Internal,
                "no chain configured".into(),
            );
            return;
        };
        let history = room.history();
        let (sources, tool) = self
            .retrieve(room, &history, &turn)
            .instrument(tracing::info_span!("retrieve"))
            .await;
        let request = prompt::build_request(&self.cfg.system_prompt, &history, &turn, sources);
        let prompt_tokens = prompt::estimate_tokens(&request);
        let start = self.models.start_index(
            chain,
            RouteInput {
                prompt_tokens,
                sources: request.sources.len(),
                quality: turn.quality,
            },
        );
        let cancel = life.turn_cancel.child_token();
        let first_model = chain.links[start].provider.model().to_string();
        if !room.begin_turn(&turn, &first_model, &chain.name, cancel.clone()) {
            return;
        }
        if let Some(tool) = tool {
            room.turn_event(turn.turn_id, tool);
        }

        let started = Instant::now();
        let deadline = started + ms(self.cfg.deadline_ms);
        let mut progress = Progress::default();
        let mut last: Option<Arc<Link>> = None;
        let mut last_failure: Option<Failure> = None;
        let mut outcome: Option<Outcome> = None;

        'links: for (i, link) in chain.links.iter().enumerate().skip(start) {
            last = Some(link.clone());
            if !link.is_extractive() && !link.breaker.try_acquire() {
                crate::metrics::provider_attempt(&link.name, "circuit_open");
                progress.attempts.push(attempt::record(
                    link,
                    AttemptOutcome::CircuitOpen,
                    Duration::ZERO,
                    None,
                    None,
                ));
                continue;
            }
            let probe = chain.escalate_on_refusal && chain.has_stronger_after(i);
            let mut retries = 0;
            loop {
                if Instant::now() >= deadline {
                    if !link.is_extractive() {
                        link.breaker.release();
                    }
                    last_failure = Some(Failure {
                        code: ErrorCode::UpstreamTimeout,
                        message: format!("turn exceeded its {} ms deadline", self.cfg.deadline_ms),
                        retry_after: None,
                    });
                    break 'links;
                }
                let t0 = Instant::now();
                let span = tracing::info_span!("generate", provider = %link.name, retry = retries);
                let end = attempt::run(
                    room,
                    &turn,
                    link,
                    &request,
                    &cancel,
                    deadline,
                    probe,
                    chain,
                    &mut progress,
                )
                .instrument(span)
                .await;
                let took = t0.elapsed();
                if !link.is_extractive() {
                    match &end {
                        AttemptEnd::Cancelled => link.breaker.release(),
                        AttemptEnd::Done(_) | AttemptEnd::Empty | AttemptEnd::Refused => {
                            link.breaker.record(true)
                        }
                        AttemptEnd::Failed { .. } => link.breaker.record(false),
                    }
                }
                let rec = end.record(link, took);
                crate::metrics::provider_attempt(&link.name, rec.outcome.as_str());
                if !link.is_extractive() {
                    crate::metrics::circuit_state(&link.name, link.breaker.state().as_metric());
                }
                progress.attempts.push(rec);
                match end {
                    AttemptEnd::Done(finish) => {
                        outcome = Some(Outcome::Finished(finish));
                        break 'links;
                    }
                    AttemptEnd::Cancelled => {
                        outcome = Some(Outcome::Cancelled);
                        break 'links;
                    }
                    AttemptEnd::Empty | AttemptEnd::Refused => {
                        crate::metrics::provider_fallback(&chain.name);
                        continue 'links;
                    }
                    AttemptEnd::Failed {
                        error, timeout_msg, ..
                    } => {
                        let failure = match &timeout_msg {
                            Some(msg) => Failure {
                                code: ErrorCode::UpstreamTimeout,
                                message: msg.clone(),
                                retry_after: None,
                            },
                            None => error
                                .as_ref()
                                .map(Failure::from_provider)
                                .unwrap_or(Failure {
                                    code: ErrorCode::Internal,
                                    message: "attempt failed".into(),
                                    retry_after: None,
                                }),
                        };
                        if progress.deltas > 0 {
                            // Text already reached clients: no silent switch to another model.
                            outcome = Some(Outcome::Failed(failure));
                            break 'links;
                        }
                        let retryable =
                            timeout_msg.is_none() && error.as_ref().is_some_and(retry_helps);
                        let breaker_ok =
                            link.is_extractive() || link.breaker.state() == BreakerState::Closed;
                        last_failure = Some(failure.clone());
                        if !(retryable && breaker_ok && retries < link.entry.max_retries) {
                            crate::metrics::provider_fallback(&chain.name);
                            continue 'links;
                        }
                        let wait = failure
                            .retry_after
                            .unwrap_or_else(|| backoff(link, retries));
                        if Instant::now() + wait >= deadline {
                            crate::metrics::provider_fallback(&chain.name);
                            continue 'links;
                        }
                        crate::metrics::provider_retry(&link.name);
                        tokio::select! {
                            _ = cancel.cancelled() => {
                                outcome = Some(Outcome::Cancelled);
                                break 'links;
                            }
                            _ = tokio::time::sleep(wait) => {}
                        }
                        retries += 1;
                    }
                }
            }
        }
        let outcome = outcome.unwrap_or_else(|| {
            Outcome::Failed(last_failure.unwrap_or(Failure {
                code: ErrorCode::Internal,
                message: "no link of the chain could answer".into(),
                retry_after: None,
            }))
        });
        let citations = prompt::citations(&progress.answer, request.sources.len());
        self.finish(
            room,
            &turn,
            life,
            chain,
            last,
            outcome,
            progress,
            prompt_tokens,
            started,
            citations,
        );
    }

    /// Sends `error` (when failed), `metrics` and the one `end`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        room: &Room,
        turn: &QueuedTurn,
        life: &Lifecycle,
        chain: &chain::Chain,
        last: Option<Arc<Link>>,
        outcome: Outcome,
        progress: Progress,
        prompt_tokens: u64,
        started: Instant,
        citations: Vec<usize>,
    ) {
        let finish_reason = match &outcome {
            Outcome::Finished(UpstreamFinish::Stop) => FinishReason::Stop,
            Outcome::Finished(UpstreamFinish::Length) => FinishReason::Length,
            Outcome::Cancelled => FinishReason::Cancelled,
            Outcome::Failed(_) => FinishReason::Error,
        };
        let error = match outcome {
            Outcome::Failed(f) => Some(f),
            Outcome::Cancelled if life.turn_cancel.is_cancelled() => Some(Failure {
                code: ErrorCode::ShuttingDown,
                message: "turn cancelled: server shutdown grace period ran out".into(),
                retry_after: None,
            }),
            _ => None,
        };
        if let Some(f) = error {
            tracing::warn!(turn_id = %turn.turn_id, code = f.code.as_str(), message = %f.message, "turn failed");
            room.turn_event(
                turn.turn_id,
                EventBody::Error {
                    code: f.code,
                    message: f.message,
                    retryable: f.code.retryable(),
                    retry_after_ms: f.retry_after.map(|d| d.as_millis() as u64),
                },
            );
        }
        let (tokens_in, tokens_out, usage_reported) = match progress.usage {
            Some((i, o)) => (i, o, true),
            None => (prompt_tokens, progress.deltas, false),
        };
        let (model, provider, cost_usd) = match &last {
            Some(link) => (
                link.provider.model().to_string(),
                link.name.clone(),
                (tokens_in as f64 * link.entry.price_input_per_mtok
                    + tokens_out as f64 * link.entry.price_output_per_mtok)
                    / 1e6,
            ),
            None => (String::new(), String::new(), 0.0),
        };
        let duration = started.elapsed();
        let ttft = progress.first_token.map(|t| t.duration_since(started));
        crate::metrics::turn_finished(&crate::metrics::TurnRecord {
            finish_reason: finish_reason.as_str(),
            model: &model,
            duration,
            ttft,
            tokens_in,
            tokens_out,
            cost_usd,
        });
        room.turn_event(
            turn.turn_id,
            EventBody::Metrics(TurnMetrics {
                model,
                provider,
                chain: chain.name.clone(),
                ttft_ms: ttft.map(|d| d.as_millis() as u64),
                duration_ms: duration.as_millis() as u64,
                tokens_in,
                tokens_out,
                usage_reported,
                cost_usd,
                citations,
                attempts: progress.attempts,
            }),
        );
        let partial = progress.deltas > 0
            && matches!(finish_reason, FinishReason::Cancelled | FinishReason::Error);
        room.finish_turn(turn.turn_id, finish_reason, partial);
    }
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
