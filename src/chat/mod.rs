//! A chat turn: build the conversation, route it to a chain, stream the answer into the room,
//! and end the turn exactly once whatever happens (stop, length, cancel, timeout, failure).
//!
//! Fallback happens only before the first token reaches clients: retries with backoff, then
//! the next link. After that, a failure ends the turn with `error` + `end(error)` and the
//! partial answer is kept.

mod attempt;
pub mod chain;
mod prompt;
mod replay;
mod retrieve;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use self::attempt::{AttemptEnd, Progress};
use self::chain::{Link, Models, RouteInput};
use self::sink::TurnSink;
use crate::cache::{AnswerCache, CacheHit, CacheLayer, CachedAnswer, Scope, conversation_state};
use crate::config::{SafetyConfig, ScreenAction, TurnConfig, ms};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::limits::{Estimate, Limiter};
use crate::protocol::{AttemptOutcome, EventBody, FinishReason, TurnMetrics};
use crate::providers::{BreakerState, ProviderError, UpstreamFinish};
use crate::retrieval::Retrieval;
use crate::rooms::QueuedTurn;
use crate::safety::Redactor;

/// Runs turns through the configured fallback chains.
pub struct TurnEngine {
    models: Models,
    cfg: TurnConfig,
    retrieval: Option<Arc<Retrieval>>,
    cache: Option<Arc<AnswerCache>>,
    limits: Arc<Limiter>,
    safety: SafetyConfig,
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
    pub fn new(
        models: Models,
        cfg: TurnConfig,
        retrieval: Option<Arc<Retrieval>>,
        cache: Option<Arc<AnswerCache>>,
        limits: Arc<Limiter>,
        safety: SafetyConfig,
    ) -> Self {
        Self {
            models,
            cfg,
            retrieval,
            cache,
            limits,
            safety,
        }
    }

    /// The most a turn may cost: its prompt (with a margin over the estimate) and the
    /// output cap, at the dearest link from `start` on. The local extractive link costs nothing.
    fn estimate(&self, chain: &chain::Chain, start: usize, prompt_tokens: u64) -> Estimate {
        let prompt = prompt_tokens + prompt_tokens / 4 + 16;
        chain.links[start..]
            .iter()
            .filter(|l| !l.is_extractive())
            .fold(Estimate::default(), |acc, l| {
                let out = match l.entry.max_tokens {
                    0 => self.limits.default_output_tokens(),
                    n => u64::from(n),
                };
                let usd = (prompt as f64 * l.entry.price_input_per_mtok
                    + out as f64 * l.entry.price_output_per_mtok)
                    / 1e6;
                Estimate {
                    tokens: acc.tokens.max(prompt + out),
                    usd: acc.usd.max(usd),
                }
            })
    }

    /// The cache lookup for one layer, counted in the metrics.
    fn lookup(
        &self,
        tenant: &str,
        scope: Option<&Scope>,
        prompt: &str,
        vector: Option<&[f32]>,
    ) -> Option<CacheHit> {
        let (cache, scope) = (self.cache.as_ref()?, scope?);
        let layer = if vector.is_some() {
            "semantic"
        } else {
            "exact"
        };
        let hit = cache
            .lookup(tenant, scope, prompt, vector)
            .filter(|h| vector.is_none() || h.layer == CacheLayer::Semantic);
        crate::metrics::cache_lookup(layer, hit.is_some());
        hit
    }

    /// Whether `name` is a configured chain.
    pub fn has_chain(&self, name: &str) -> bool {
        self.models.chain(name).is_some()
    }

    /// The circuit breaker of a provider: closed, open or half_open.
    pub fn breaker_state(&self, provider: &str) -> Option<&'static str> {
        self.models.link(provider).map(|l| match l.breaker.state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        })
    }

    /// The default chain's name (`turn.chain`).
    pub fn default_chain(&self) -> &str {
        &self.cfg.chain
    }

    /// Runs one turn to its single `end` event.
    pub async fn run(&self, room: &dyn TurnSink, turn: QueuedTurn, life: &Lifecycle) {
        if life.is_draining() {
            room.reject_turn(
                turn.turn_id,
                ErrorCode::ShuttingDown,
                "server is shutting down; send the prompt again after reconnecting".into(),
                None,
            );
            return;
        }
        let chain_name = turn.chain.as_deref().unwrap_or(&self.cfg.chain);
        let Some(chain) = self.models.chain(chain_name) else {
            room.reject_turn(
                turn.turn_id,
                ErrorCode::Internal,
                format!("no chain named {chain_name:?} is configured"),
                None,
            );
            return;
        };
        let flagged = match self.safety.prompts {
            ScreenAction::Off => None,
            action => crate::safety::screen(&turn.prompt).map(|rule| (rule, action)),
        };
        if let Some((rule, action)) = flagged {
            let blocked = action == ScreenAction::Block;
            crate::metrics::screened("prompt", rule, if blocked { "blocked" } else { "flagged" });
            if blocked {
                room.reject_turn(
                    turn.turn_id,
                    ErrorCode::PromptRejected,
                    format!("the prompt looks like an injection attempt ({rule}); rephrase it"),
                    None,
                );
                return;
            }
        }
        let started = Instant::now();
        let history = room.history();
        let tenant = room.tenant().to_string();
        let scope = (self.cache.is_some() && turn.use_cache).then(|| Scope {
            corpus_version: self
                .retrieval
                .as_ref()
                .map_or(0, |r| r.corpus_version(&tenant)),
            conversation: conversation_state(&history),
            chain: chain.name.clone(),
        });
        if let Some(hit) = self.lookup(&tenant, scope.as_ref(), &turn.prompt, None) {
            return replay::replay(room, &turn, &chain.name, hit, started);
        }
        let mut embedding = None;
        let retrieval = self.retrieval.as_ref().filter(|_| turn.retrieval);
        let (sources, tool) = match retrieval {
            None => (Vec::new(), None),
            Some(r) => {
                let query =
                    prompt::retrieval_query(&history, &turn.prompt, r.cfg.short_prompt_words);
                let vector = retrieve::embed(r, &query).await;
                if let Ok(v) = &vector {
                    if let Some(hit) = self.lookup(&tenant, scope.as_ref(), &turn.prompt, Some(v)) {
                        return replay::replay(room, &turn, &chain.name, hit, started);
                    }
                    embedding = Some(v.clone());
                }
                let (sources, tool) =
                    retrieve::search(r, &tenant, &query, vector, self.safety.chunks)
                        .instrument(tracing::info_span!("retrieve"))
                        .await;
                (sources, Some(tool))
            }
        };
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
        let reservation = match self.limits.reserve(
            &turn.owner.principal,
            self.estimate(chain, start, prompt_tokens),
        ) {
            Ok(r) => r,
            Err(e) => {
                room.reject_turn(
                    turn.turn_id,
                    ErrorCode::RateLimited,
                    e.to_string(),
                    e.retry_after,
                );
                return;
            }
        };
        let cancel = life.turn_cancel.child_token();
        let first_model = chain.links[start].provider.model().to_string();
        if !room.begin_turn(&turn, &first_model, &chain.name, None, cancel.clone()) {
            return;
        }
        if let Some((rule, _)) = flagged {
            room.turn_event(
                turn.turn_id,
                EventBody::Tool {
                    name: "screen_prompt".into(),
                    input: serde_json::json!({ "source": "prompt" }),
                    output: serde_json::json!({
                        "flagged": [{ "source": "prompt", "rule": rule, "action": "flagged" }],
                    }),
                    duration_ms: 0,
                },
            );
        }
        if let Some(tool) = &tool {
            room.turn_event(turn.turn_id, tool.clone());
        }

        let deadline = started + ms(self.cfg.deadline_ms);
        let mut progress = Progress {
            redactor: Redactor::new(self.safety.redact_secrets, self.safety.redact_emails),
            ..Progress::default()
        };
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
        let mut citation_added = false;
        if self.cfg.attribute_citations
            && matches!(outcome, Outcome::Finished(UpstreamFinish::Stop))
            && last.as_ref().is_some_and(|l| !l.is_extractive())
            && prompt::citations(&progress.answer, request.sources.len()).is_empty()
            && let cited = prompt::attribute(&progress.answer, &request.sources)
            && !cited.is_empty()
        {
            let mark: String = std::iter::once(String::from(" "))
                .chain(cited.iter().map(|n| format!("[{n}]")))
                .collect();
            room.delta(turn.turn_id, mark.clone());
            progress.answer.push_str(&mark);
            citation_added = true;
        }
        let citations = prompt::citations(&progress.answer, request.sources.len());
        // Only complete, first-class answers are worth replaying: not errors, not cut by
        // length, not the degraded extractive fallback.
        let storable = matches!(outcome, Outcome::Finished(UpstreamFinish::Stop))
            && last.as_ref().is_some_and(|l| !l.is_extractive())
            && !progress.answer.trim().is_empty();
        let answer = progress.answer.clone();
        if let Some(r) = &progress.redactor {
            crate::metrics::redacted("secret", r.counts[0]);
            crate::metrics::redacted("email", r.counts[1]);
        }
        let (model, cost_usd, billed_tokens) = self.finish(
            room,
            &turn,
            life,
            chain,
            last,
            outcome,
            progress,
            prompt_tokens,
            started,
            citations.clone(),
            citation_added,
        );
        reservation.settle(billed_tokens, cost_usd);
        if let (true, Some(cache), Some(scope)) = (storable, &self.cache, scope) {
            cache.insert(
                &tenant,
                scope,
                CachedAnswer {
                    prompt: turn.prompt.clone(),
                    embedding,
                    text: answer,
                    tool,
                    model,
                    cost_usd,
                    citations,
                },
            );
        }
    }

    /// Sends `error` (when failed), `metrics` and the one `end`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        room: &dyn TurnSink,
        turn: &QueuedTurn,
        life: &Lifecycle,
        chain: &chain::Chain,
        last: Option<Arc<Link>>,
        outcome: Outcome,
        progress: Progress,
        prompt_tokens: u64,
        started: Instant,
        citations: Vec<usize>,
        citation_added: bool,
    ) -> (String, f64, u64) {
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
                EventBody::error(f.code, f.message, f.retry_after),
            );
        }
        let (tokens_in, tokens_out, usage_reported) = match progress.usage {
            Some((i, o)) => (i, o, true),
            None => (prompt_tokens, progress.deltas, false),
        };
        // Only an upstream that generated or reported usage is billed: a refused connection,
        // an open breaker or an error status consumed nothing.
        let billable = progress.usage.is_some() || progress.deltas > 0;
        let upstream = billable && last.as_ref().is_some_and(|l| !l.is_extractive());
        let billed_tokens = if upstream { tokens_in + tokens_out } else { 0 };
        let (model, provider, cost_usd) = match &last {
            Some(link) => (
                link.provider.model().to_string(),
                link.name.clone(),
                if billable {
                    (tokens_in as f64 * link.entry.price_input_per_mtok
                        + tokens_out as f64 * link.entry.price_output_per_mtok)
                        / 1e6
                } else {
                    0.0
                },
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
                model: model.clone(),
                provider,
                chain: chain.name.clone(),
                ttft_ms: ttft.map(|d| d.as_millis() as u64),
                duration_ms: duration.as_millis() as u64,
                tokens_in,
                tokens_out,
                usage_reported,
                cost_usd,
                citations,
                citation_added,
                cached: false,
                saved_usd: 0.0,
                attempts: progress.attempts,
            }),
        );
        let partial = progress.deltas > 0
            && matches!(finish_reason, FinishReason::Cancelled | FinishReason::Error);
        room.finish_turn(turn.turn_id, finish_reason, partial);
        (model, cost_usd, billed_tokens)
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
