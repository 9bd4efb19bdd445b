//! Serving a turn from the answer cache: the same events as a generated turn (`start` marked
//! cached, the original `tool` event with its citations, `delta`s, `metrics` with cost 0 and
//! the cost saved, `end`), published back to back.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sink::TurnSink;
use crate::cache::CacheHit;
use crate::protocol::{CacheInfo, EventBody, FinishReason, TurnMetrics};
use crate::providers::extractive::split_keep_spaces;
use crate::rooms::QueuedTurn;

/// Replays `hit` as the turn's answer.
pub fn replay(
    room: &dyn TurnSink,
    turn: &QueuedTurn,
    chain: &str,
    hit: CacheHit,
    started: Instant,
) {
    let answer = hit.answer;
    let info = CacheInfo {
        layer: hit.layer,
        similarity: hit.similarity,
    };
    if !room.begin_turn(
        turn,
        &answer.model,
        chain,
        Some(info),
        CancellationToken::new(),
    ) {
        return;
    }
    if let Some(tool) = &answer.tool {
        room.turn_event(turn.turn_id, tool.clone());
    }
    let mut first = None;
    let mut pieces = 0;
    for piece in split_keep_spaces(&answer.text) {
        first.get_or_insert_with(Instant::now);
        pieces += 1;
        room.delta(turn.turn_id, piece);
    }
    let duration = started.elapsed();
    let ttft = first.map(|t| t.duration_since(started));
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
    room.turn_event(
        turn.turn_id,
        EventBody::Metrics(TurnMetrics {
            model: answer.model.clone(),
            provider: "cache".into(),
            chain: chain.to_string(),
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
        }),
    );
    room.finish_turn(turn.turn_id, FinishReason::Stop, false);
}
