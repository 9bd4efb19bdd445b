//! Retrieve: embed the query once (the semantic cache reuses the vector), search the
//! tenant's documents and screen each hit. Failures never fail the turn: they are reported
//! in the `search_documents` event and the turn goes on without sources.

use std::sync::Arc;

use tracing::Instrument;

use super::turn::Turn;
use super::{TurnEngine, prompt};
use crate::cache::CacheHit;
use crate::protocol::{EventBody, SEARCH_DOCUMENTS, ToolInput, ToolOutput};
use crate::retrieval::{Grounding, RetrievalError};

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
        let vector: Result<Vec<f32>, RetrievalError> = r
            .embedder
            .embed_query(&query)
            .instrument(tracing::debug_span!("embed"))
            .await
            .map_err(Into::into);
        let mut embedding = None;
        if let Ok(v) = &vector {
            if let Some(hit) = self.lookup(turn, Some(v)) {
                return Retrieved::Cached(hit);
            }
            embedding = Some(v.clone());
        }
        let grounding = r
            .ground(&turn.tenant, query, vector, self.safety.chunks)
            .instrument(tracing::debug_span!("vector.search"))
            .await;
        Retrieved::Grounded(Grounded {
            grounding: Some(Arc::new(grounding)),
            embedding,
        })
    }
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
