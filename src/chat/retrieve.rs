//! The retrieval phase of a turn: embed the query once (the semantic cache reuses the
//! vector), search the tenant's documents, and describe it as a `search_documents` event.
//! Failures never fail the turn: they are reported in the event and the turn goes on
//! without sources.

use std::time::Instant;

use crate::config::ScreenAction;
use crate::error::ErrorCode;
use crate::protocol::EventBody;
use crate::providers::Source;
use crate::retrieval::{Retrieval, RetrievalError, SearchOutcome};

const TOOL: &str = "search_documents";

/// Embeds the retrieval query; `Err` is reported later in the tool event.
pub async fn embed(r: &Retrieval, query: &str) -> Result<Vec<f32>, RetrievalError> {
    Ok(r.embedder.embed_query(query).await?)
}

/// Searches with the vector (or reports why there is none) and builds the tool event.
pub async fn search(
    r: &Retrieval,
    tenant: &str,
    query: &str,
    vector: Result<Vec<f32>, RetrievalError>,
    screen: ScreenAction,
) -> (Vec<Source>, EventBody) {
    let t0 = Instant::now();
    let input = serde_json::json!({ "query": query, "top_k": r.cfg.top_k });
    let found = match vector {
        Ok(v) => {
            r.search_vector(tenant, query, v, r.cfg.top_k, r.cfg.score_floor)
                .await
        }
        Err(e) => Err(e),
    };
    match found {
        Ok(found) => tool_ok(input, found, screen),
        Err(e) => {
            tracing::warn!(error = %e, "retrieval failed; answering without sources");
            let output = serde_json::json!({
                "error": { "code": ErrorCode::from(&e).as_str(), "message": e.to_string() },
                "results": [],
            });
            let tool = EventBody::Tool {
                name: TOOL.into(),
                input,
                output,
                duration_ms: t0.elapsed().as_millis() as u64,
            };
            (Vec::new(), tool)
        }
    }
}

/// Screens each hit for injected instructions: blocked ones never reach the model, flagged
/// ones do, marked; both are listed in the tool event.
fn tool_ok(
    input: serde_json::Value,
    found: SearchOutcome,
    screen: ScreenAction,
) -> (Vec<Source>, EventBody) {
    let mut screened = Vec::new();
    // Kept hits with the rule they tripped (flag mode), in order.
    let (hits, flags): (Vec<_>, Vec<_>) = found
        .hits
        .into_iter()
        .filter_map(|h| {
            let rule = match screen {
                ScreenAction::Off => None,
                _ => crate::safety::screen(&h.text),
            };
            let Some(rule) = rule else {
                return Some((h, None));
            };
            let blocked = screen == ScreenAction::Block;
            let action = if blocked { "dropped" } else { "flagged" };
            crate::metrics::screened("chunk", rule, action);
            screened.push(serde_json::json!({
                "doc_id": h.doc_id, "chunk": h.chunk, "rule": rule, "action": action,
            }));
            (!blocked).then_some((h, Some(rule)))
        })
        .unzip();
    let sources: Vec<Source> = hits
        .into_iter()
        .enumerate()
        .map(|(i, h)| Source {
            n: i + 1,
            doc_id: h.doc_id,
            title: h.title,
            section: h.section,
            page: h.page,
            chunk: h.chunk,
            text: h.text,
            score: h.score,
        })
        .collect();
    let results: Vec<_> = sources
        .iter()
        .zip(flags)
        .map(|(s, flag)| {
            let mut v = serde_json::json!({
                "n": s.n, "doc_id": s.doc_id, "title": s.title, "section": s.section,
                "page": s.page, "chunk": s.chunk,
                "score": s.score, "snippet": s.text.chars().take(300).collect::<String>(),
            });
            if let Some(rule) = flag {
                v["flagged"] = serde_json::Value::from(rule);
            }
            v
        })
        .collect();
    let tool = EventBody::Tool {
        name: TOOL.into(),
        input,
        output: serde_json::json!({
            "results": results,
            "dropped_duplicates": found.dropped_duplicates,
            "screened": screened,
        }),
        duration_ms: found.took.as_millis() as u64,
    };
    (sources, tool)
}
