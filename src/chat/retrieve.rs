//! Retrieve: embed the query once (the semantic cache reuses the vector), search the
//! tenant's documents and screen each hit. Failures never fail the turn: they are reported
//! in the `search_documents` event and the turn goes on without sources.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::turn::Turn;
use super::{TurnEngine, prompt};
use crate::cache::CacheHit;
use crate::config::ScreenAction;
use crate::error::ErrorCode;
use crate::protocol::{EventBody, SEARCH_DOCUMENTS, ToolInput, ToolOutput};
use crate::providers::Source;
use crate::retrieval::{Grounding, Retrieval, RetrievalError, Screened, SearchOutcome};

/// How the retrieval phase ended.
pub(super) enum Retrieved {
    /// The semantic cache layer matched the query's vector.
    Cached(CacheHit),
    Grounded(Grounded),
}

/// What the turn carries on with.
#[derive(Default)]
pub(super) struct Grounded {
    /// `None` when the turn does not retrieve.
    pub grounding: Option<Arc<Grounding>>,
    /// The query vector, kept for the cache entry.
    pub embedding: Option<Vec<f32>>,
}

impl TurnEngine {
    pub(super) async fn retrieve(&self, turn: &Turn<'_>) -> Retrieved {
        let Some(r) = self.retrieval.as_ref().filter(|_| turn.req.retrieval) else {
            return Retrieved::Grounded(Grounded::default());
        };
        let query =
            prompt::retrieval_query(&turn.history, &turn.req.prompt, r.cfg.short_prompt_words);
        let vector: Result<Vec<f32>, RetrievalError> =
            r.embedder.embed_query(&query).await.map_err(Into::into);
        let mut embedding = None;
        if let Ok(v) = &vector {
            if let Some(hit) = self.lookup(turn, Some(v)) {
                return Retrieved::Cached(hit);
            }
            embedding = Some(v.clone());
        }
        let grounding = search(r, &turn.tenant, query, vector, self.safety.chunks)
            .instrument(tracing::info_span!("retrieve"))
            .await;
        Retrieved::Grounded(Grounded {
            grounding: Some(Arc::new(grounding)),
            embedding,
        })
    }
}

/// Searches with the vector (or reports why there is none).
async fn search(
    r: &Retrieval,
    tenant: &str,
    query: String,
    vector: Result<Vec<f32>, RetrievalError>,
    screen: ScreenAction,
) -> Grounding {
    let t0 = Instant::now();
    let found = match vector {
        Ok(v) => {
            r.search_vector(tenant, &query, v, r.cfg.top_k, r.cfg.score_floor)
                .await
        }
        Err(e) => Err(e),
    };
    let mut g = Grounding {
        query,
        top_k: r.cfg.top_k,
        ..Grounding::default()
    };
    match found {
        Ok(found) => screen_hits(&mut g, found, screen),
        Err(e) => {
            tracing::warn!(error = %e, "retrieval failed; answering without sources");
            g.error = Some((ErrorCode::from(&e), e.to_string()));
            g.took = t0.elapsed();
        }
    }
    g
}

/// Screens each hit for injected instructions: blocked ones never reach the model, flagged
/// ones do, marked; both are listed.
fn screen_hits(g: &mut Grounding, found: SearchOutcome, screen: ScreenAction) {
    for h in found.hits {
        // The title and section reach the model too (each source is listed with its place).
        let rule = match screen {
            ScreenAction::Off => None,
            _ => [&h.text, &h.title, &h.section]
                .into_iter()
                .find_map(|t| crate::safety::screen(t)),
        };
        if let Some(rule) = rule {
            let blocked = screen == ScreenAction::Block;
            let action = if blocked { "dropped" } else { "flagged" };
            crate::metrics::screened("chunk", rule, action);
            g.screened.push(Screened {
                doc_id: h.doc_id.clone(),
                chunk: h.chunk,
                rule,
                action,
            });
            if blocked {
                continue;
            }
        }
        g.sources.push(Source {
            n: g.sources.len() + 1,
            doc_id: h.doc_id,
            title: h.title,
            section: h.section,
            page: h.page,
            chunk: h.chunk,
            text: h.text,
            score: h.score,
        });
        g.flags.push(rule);
    }
    g.dropped_duplicates = found.dropped_duplicates;
    g.took = found.took;
}

/// The `search_documents` event (live, and replayed from the cache).
pub(super) fn search_event(g: &Grounding) -> EventBody {
    EventBody::own_tool(
        SEARCH_DOCUMENTS,
        ToolInput::SearchDocuments(g.input()),
        ToolOutput::SearchDocuments(g.output()),
        g.took.as_millis() as u64,
    )
}
