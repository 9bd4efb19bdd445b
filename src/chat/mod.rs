//! A chat turn: build the conversation, stream the answer from the provider into the room,
//! and end the turn exactly once whatever happens (stop, length, cancel, timeout, failure).

mod prompt;

use std::time::{Duration, Instant};

use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

use crate::config::{ProviderConfig, ms};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::{EventBody, FinishReason, TurnMetrics};
use crate::providers::{Provider, ProviderError, StreamEvent, UpstreamFinish};
use crate::rooms::{QueuedTurn, Room};

/// Runs turns against the configured provider.
pub struct TurnEngine {
    provider: Provider,
    cfg: ProviderConfig,
}

/// How generation ended.
enum Outcome {
    Finished(UpstreamFinish),
    Cancelled,
    Failed {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Default)]
struct Progress {
    first_token: Option<Instant>,
    deltas: u64,
    usage: Option<(u64, u64)>,
}

impl TurnEngine {
    pub fn new(provider: Provider, cfg: ProviderConfig) -> Self {
        Self { provider, cfg }
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
        let cancel = life.turn_cancel.child_token();
        let model = self.provider.model().to_string();
        let Some(ctx) = room.begin_turn(&turn, &model, cancel.clone()) else {
            return;
        };
        let request = prompt::build_request(&self.cfg.system_prompt, &ctx.history, &turn);
        let tokens_in_estimate = prompt::estimate_tokens(&request);
        let started = Instant::now();
        let mut progress = Progress::default();
        let outcome = self
            .generate(room, &turn, &request, &cancel, started, &mut progress)
            .await;

        let (finish_reason, partial) = match &outcome {
            Outcome::Finished(UpstreamFinish::Stop) => (FinishReason::Stop, false),
            Outcome::Finished(UpstreamFinish::Length) => (FinishReason::Length, false),
            Outcome::Cancelled => (FinishReason::Cancelled, progress.deltas > 0),
            Outcome::Failed { .. } => (FinishReason::Error, progress.deltas > 0),
        };
        if let Outcome::Failed {
            code,
            message,
            retry_after,
        } = outcome
        {
            tracing::warn!(turn_id = %turn.turn_id, code = code.as_str(), %message, "turn failed");
            room.turn_event(
                turn.turn_id,
                EventBody::Error {
                    code,
                    message,
                    retryable: code.retryable(),
                    retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
                },
            );
        } else if matches!(outcome, Outcome::Cancelled) && life.turn_cancel.is_cancelled() {
            room.turn_event(
                turn.turn_id,
                EventBody::Error {
                    code: ErrorCode::ShuttingDown,
                    message: "turn cancelled: server shutdown grace period ran out".into(),
                    retryable: true,
                    retry_after_ms: None,
                },
            );
        }
        let (tokens_in, tokens_out, usage_reported) = match progress.usage {
            Some((i, o)) => (i, o, true),
            None => (tokens_in_estimate, progress.deltas, false),
        };
        room.turn_event(
            turn.turn_id,
            EventBody::Metrics(TurnMetrics {
                model,
                ttft_ms: progress
                    .first_token
                    .map(|t| t.duration_since(started).as_millis() as u64),
                duration_ms: started.elapsed().as_millis() as u64,
                tokens_in,
                tokens_out,
                usage_reported,
            }),
        );
        room.finish_turn(turn.turn_id, finish_reason, partial);
    }

    /// Streams from the provider into the room, enforcing the first-token, idle and total
    /// timeouts and the turn's cancel token.
    async fn generate(
        &self,
        room: &Room,
        turn: &QueuedTurn,
        request: &crate::providers::ChatRequest,
        cancel: &CancellationToken,
        started: Instant,
        progress: &mut Progress,
    ) -> Outcome {
        let start = tokio::time::Instant::from_std(started);
        let deadline = start + ms(self.cfg.total_timeout_ms);
        let first_deadline = (start + ms(self.cfg.first_token_timeout_ms)).min(deadline);

        let opened = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Cancelled,
            r = timeout_at(first_deadline, self.provider.stream(request)) => r,
        };
        let mut stream = match opened {
            Err(_) => return self.timeout_outcome(progress, first_deadline == deadline),
            Ok(Err(e)) => return failed(&e),
            Ok(Ok(s)) => s,
        };
        let mut finish = None;
        loop {
            let limit = if progress.first_token.is_none() {
                first_deadline
            } else {
                (tokio::time::Instant::now() + ms(self.cfg.idle_timeout_ms)).min(deadline)
            };
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Outcome::Cancelled,
                r = timeout_at(limit, stream.next()) => r,
            };
            match next {
                Err(_) => return self.timeout_outcome(progress, limit == deadline),
                Ok(None) => break,
                Ok(Some(Err(e))) => return failed(&e),
                Ok(Some(Ok(StreamEvent::Delta(text)))) => {
                    if progress.first_token.is_none() {
                        progress.first_token = Some(Instant::now());
                    }
                    progress.deltas += 1;
                    room.delta(turn.turn_id, text);
                }
                Ok(Some(Ok(StreamEvent::Finish(f)))) => finish = Some(f),
                Ok(Some(Ok(StreamEvent::Usage { input, output }))) => {
                    progress.usage = Some((input, output));
                }
            }
        }
        Outcome::Finished(finish.unwrap_or(UpstreamFinish::Stop))
    }

    fn timeout_outcome(&self, progress: &Progress, total: bool) -> Outcome {
        let message = if total {
            format!("turn exceeded {} ms", self.cfg.total_timeout_ms)
        } else if progress.first_token.is_none() {
            format!(
                "no first token within {} ms",
                self.cfg.first_token_timeout_ms
            )
        } else {
            format!("no token for {} ms", self.cfg.idle_timeout_ms)
        };
        Outcome::Failed {
            code: ErrorCode::UpstreamTimeout,
            message,
            retry_after: None,
        }
    }
}

fn failed(e: &ProviderError) -> Outcome {
    let retry_after = match e {
        ProviderError::Status { retry_after, .. } => *retry_after,
        _ => None,
    };
    Outcome::Failed {
        code: ErrorCode::from(e),
        message: e.to_string(),
        retry_after,
    }
}
