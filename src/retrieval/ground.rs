//! Grounding one query: search the tenant's chunks with the query's vector and screen each
//! hit for injected instructions, so what reaches a model is the same whether confab
//! searched before the answer or the model asked (`search_documents`). A failure is a
//! grounding without sources that says why, never an error of the turn.

use std::time::Instant;

use super::{Grounding, Retrieval, RetrievalError, Screened, SearchOutcome};
use crate::config::ScreenAction;
use crate::error::ErrorCode;
use crate::providers::Source;

impl Retrieval {
    /// Searches `tenant`'s chunks with `vector` (or reports why there is none) and screens
    /// the hits; sources are numbered from 1.
    pub async fn ground(
        &self,
        tenant: &str,
        query: String,
        vector: Result<Vec<f32>, RetrievalError>,
        screen: ScreenAction,
    ) -> Grounding {
        let t0 = Instant::now();
        let found = match vector {
            Ok(v) => {
                self.search_vector(tenant, &query, v, self.cfg.top_k, self.cfg.score_floor)
                    .await
            }
            Err(e) => Err(e),
        };
        let mut g = Grounding {
            query,
            top_k: self.cfg.top_k,
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
