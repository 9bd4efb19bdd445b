//! Serving a turn from the answer cache: the same events as a generated turn (`start` marked
//! cached, the original `search_documents` event with its sources, `delta`s, `metrics` with
//! cost 0 and the cost saved, `end`), published back to back.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TurnStart;
use super::retrieve::search_event;
use super::turn::Turn;
use crate::cache::CacheHit;
use crate::protocol::{CacheInfo, EventBody, FinishReason, TurnMetrics};
use crate::providers::extractive::split_keep_spaces;

/// Replays `hit` as the turn's answer.
pub(super) fn replay(turn: &Turn<'_>, hit: CacheHit) {
    let (sink, id) = (turn.sink, turn.req.turn_id);
    let answer = hit.answer;
    let start = TurnStart {
        model: &answer.model,
        chain: &turn.chain.name,
        cached: Some(CacheInfo {
            layer: hit.layer,
            similarity: hit.similarity,
        }),
        cancel: CancellationToken::new(),
    };
    if !sink.begin_turn(&turn.req, start) {
        return;
    }
    if let Some(g) = &answer.grounding {
        sink.turn_event(id, search_event(g));
    }
    let mut first = None;
    let mut pieces = 0;
    for piece in split_keep_spaces(&answer.text) {
        first.get_or_insert_with(Instant::now);
        pieces += 1;
        sink.delta(id, piece);
    }
    let duration = turn.started.elapsed();
    let ttft = first.map(|t| t.duration_since(turn.started));
    crate::metrics::turn_finished(&crate::metrics::TurnRecord {
        finish_reason: FinishReason::Stop.as_str(),
        model: &answer.model,
        duration,
        ttft,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
    });
    crate::metrics::cache_saved(answer.cost_usd);
    let metrics = TurnMetrics {
        model: answer.model.clone(),
        provider: "cache".into(),
        chain: turn.chain.name.clone(),
        ttft_ms: ttft.map(|d| d.as_millis() as u64),
        duration_ms: duration.as_millis() as u64,
        tokens_in: 0,
        tokens_out: pieces,
        usage_reported: false,
        cost_usd: 0.0,
        citations: answer.citations.clone(),
        citation_added: false,
        cached: true,
        saved_usd: answer.cost_usd,
        attempts: Vec::new(),
        trace_id: crate::telemetry::trace_id(&turn.span),
    };
    sink.turn_event(id, EventBody::Metrics(metrics));
    sink.finish_turn(id, FinishReason::Stop, false);
}
