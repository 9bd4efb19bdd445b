//! Settle: everything after the last attempt, once. A missing citation is attributed, the
//! bill is worked out and booked against the reservation, clients get `error` (when failed),
//! `metrics` and the one `end`, and a first-class answer goes into the cache.

use tokio::time::Instant;

use super::generate::{Failure, Generated, Outcome};
use super::plan::Plan;
use super::retrieve::Grounded;
use super::turn::Turn;
use super::{TurnEngine, prompt, trace};
use crate::cache::CachedAnswer;
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::{EventBody, FinishReason, TurnMetrics};
use crate::providers::Source;

/// What the turn cost, and who answered.
#[derive(Debug, Clone, PartialEq)]
struct Bill {
    model: String,
    provider: String,
    tokens_in: u64,
    tokens_out: u64,
    usage_reported: bool,
    cost_usd: f64,
    /// Tokens booked against the tenant's budgets (0 when no upstream generated).
    billed_tokens: u64,
}

impl TurnEngine {
    pub(super) fn settle(
        &self,
        turn: Turn<'_>,
        plan: Plan,
        grounded: Grounded,
        mut generated: Generated,
        life: &Lifecycle,
    ) {
        let citation_added = self.attribute(&turn, &mut generated, &plan.request.sources);
        let progress = &generated.progress;
        let citations = prompt::citations(&progress.answer, plan.request.sources.len());
        // Only complete, first-class answers are worth replaying: not errors, not cut by
        // length, not the degraded extractive fallback, and not answers built on tool
        // results (a tool's answer is of its moment: the time, the weather, a record).
        let storable = generated.answered_by_model()
            && !progress.answer.trim().is_empty()
            && progress.tool_rounds == 0;
        if let Some(r) = &progress.redactor {
            crate::metrics::redacted("secret", r.counts[0]);
            crate::metrics::redacted("email", r.counts[1]);
        }
        let bill = bill(&generated, plan.prompt_tokens);
        if let Some(f) = failure(&generated.outcome, life) {
            tracing::warn!(turn_id = %turn.req.turn_id, code = f.code.as_str(), message = %f.message, "turn failed");
            let error = EventBody::error(f.code, f.message, f.retry_after);
            turn.sink.turn_event(turn.req.turn_id, error);
        }
        let mut metrics = report(&turn, &generated, &bill);
        metrics.citations = citations.clone();
        metrics.citation_added = citation_added;
        metrics.attempts = std::mem::take(&mut generated.progress.attempts);
        turn.sink
            .turn_event(turn.req.turn_id, EventBody::Metrics(metrics));
        let finish_reason = generated.outcome.finish_reason();
        self.trace(&turn, &plan, &grounded, &generated, &bill);
        let partial = generated.progress.committed()
            && matches!(finish_reason, FinishReason::Cancelled | FinishReason::Error);
        turn.sink
            .finish_turn(turn.req.turn_id, finish_reason, partial);
        plan.reservation.settle(bill.billed_tokens, bill.cost_usd);
        if storable {
            let answer = generated.progress.answer;
            self.store(turn, grounded, answer, bill, citations);
        }
    }

    /// The settled turn on its trace span, and its texts when it is captured.
    fn trace(
        &self,
        turn: &Turn<'_>,
        plan: &Plan,
        grounded: &Grounded,
        generated: &Generated,
        bill: &Bill,
    ) {
        let links = &turn.chain.links;
        let settled = trace::Settled {
            chain: &turn.chain.name,
            request_model: links[plan.start].provider.model(),
            response_model: &bill.model,
            system: trace::system_of(links, &bill.provider),
            tokens: (bill.tokens_in, bill.tokens_out),
            finish_reason: generated.outcome.finish_reason().as_str(),
            cost_usd: bill.cost_usd,
            hits: grounded.grounding.as_ref().map(|g| g.sources.len()),
            tool_rounds: generated.progress.tool_rounds,
        };
        trace::settled(&turn.span, &settled);
        let answer = &generated.progress.answer;
        (self.capture).record(&turn.span, &turn.req.prompt, &plan.request.sources, answer);
    }

    /// An answer that repeats a source without citing it gets that source's `[n]` as a last
    /// delta. True when it did.
    fn attribute(&self, turn: &Turn<'_>, generated: &mut Generated, sources: &[Source]) -> bool {
        let answer = &generated.progress.answer;
        if !(self.cfg.attribute_citations
            && generated.answered_by_model()
            && prompt::citations(answer, sources.len()).is_empty())
        {
            return false;
        }
        let cited = prompt::attribute(answer, sources);
        if cited.is_empty() {
            return false;
        }
        let mark: String = std::iter::once(String::from(" "))
            .chain(cited.iter().map(|n| format!("[{n}]")))
            .collect();
        turn.sink.delta(turn.req.turn_id, mark.clone());
        generated.progress.answer.push_str(&mark);
        true
    }

    /// Keeps the answer for the same question in the same scope.
    fn store(
        &self,
        turn: Turn<'_>,
        grounded: Grounded,
        text: String,
        bill: Bill,
        citations: Vec<usize>,
    ) {
        let (Some(cache), Some(scope)) = (&self.cache, turn.scope) else {
            return;
        };
        let answer = CachedAnswer {
            prompt: turn.req.prompt,
            embedding: grounded.embedding,
            text,
            grounding: grounded.grounding,
            model: bill.model,
            cost_usd: bill.cost_usd,
            citations,
            signature: Default::default(),
        };
        cache.insert(&turn.tenant, scope, answer);
    }
}

/// The error clients are told about, if the turn failed (or shutdown cancelled it).
fn failure(outcome: &Outcome, life: &Lifecycle) -> Option<Failure> {
    match outcome {
        Outcome::Failed(f) => Some(f.clone()),
        Outcome::Cancelled if life.turn_cancel.is_cancelled() => Some(Failure::new(
            ErrorCode::ShuttingDown,
            "turn cancelled: server shutdown grace period ran out",
        )),
        _ => None,
    }
}

/// The turn's bill: every attempt that consumed upstream tokens (escalations and retries
/// included; a refused connection, an open breaker or an error status consumed nothing),
/// each at its own link's prices. The counts shown are the last attempt's: the upstream's
/// report when there is one, else the prompt estimate and the deltas.
fn bill(generated: &Generated, prompt_tokens: u64) -> Bill {
    let progress = &generated.progress;
    let (tokens_in, tokens_out, usage_reported) = match progress.usage {
        Some((i, o)) => (i, o, true),
        None => (prompt_tokens, progress.deltas, false),
    };
    let (model, provider) = generated.last.as_ref().map_or_else(
        || (String::new(), String::new()),
        |l| (l.provider.model().to_string(), l.name.clone()),
    );
    Bill {
        model,
        provider,
        tokens_in,
        tokens_out,
        usage_reported,
        cost_usd: progress.charges.iter().map(|c| c.usd).sum(),
        billed_tokens: progress
            .charges
            .iter()
            .fold(0u64, |n, c| n.saturating_add(c.tokens)),
    }
}

/// Records the turn in the metrics and builds its `metrics` event (citations and attempts
/// are filled in by the caller).
fn report(turn: &Turn<'_>, generated: &Generated, bill: &Bill) -> TurnMetrics {
    let duration = turn.started.elapsed();
    let ttft = generated
        .progress
        .first_token
        .map(|t: Instant| t.duration_since(turn.started));
    crate::metrics::turn_finished(&crate::metrics::TurnRecord {
        finish_reason: generated.outcome.finish_reason().as_str(),
        model: &bill.model,
        duration,
        ttft,
        tokens_in: bill.tokens_in,
        tokens_out: bill.tokens_out,
        cost_usd: bill.cost_usd,
    });
    TurnMetrics {
        model: bill.model.clone(),
        provider: bill.provider.clone(),
        chain: turn.chain.name.clone(),
        ttft_ms: ttft.map(|d| d.as_millis() as u64),
        duration_ms: duration.as_millis() as u64,
        tokens_in: bill.tokens_in,
        tokens_out: bill.tokens_out,
        usage_reported: bill.usage_reported,
        cost_usd: bill.cost_usd,
        citations: Vec::new(),
        citation_added: false,
        cached: false,
        saved_usd: 0.0,
        attempts: Vec::new(),
        trace_id: crate::telemetry::trace_id(&turn.span),
    }
}
