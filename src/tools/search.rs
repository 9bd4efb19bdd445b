//! `search_documents` as a tool the model may call: follow-up searches of the tenant's
//! documents (an agentic turn that needs more than the search before the answer). It runs
//! the same search and injection screen as that search; its sources are numbered after the
//! ones the model already has, so the answer can cite them, and a chunk the model already
//! has keeps its number.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::config::ScreenAction;
use crate::protocol::{SEARCH_DOCUMENTS, SearchInput};
use crate::providers::{Source, ToolDef};
use crate::retrieval::{Grounding, Retrieval, RetrievalError};

/// One search's time (the embedding queue and the store), after which it is abandoned.
pub(super) const TIMEOUT_MS: u64 = 10_000;

/// Longest query taken, in characters (the embedder truncates long input anyway).
const MAX_QUERY_CHARS: usize = 2_000;

/// Retrieval, as the tool box runs it.
pub(super) struct Search {
    pub retrieval: Arc<Retrieval>,
    pub screen: ScreenAction,
}

/// The tool as the model is offered it.
pub(super) fn def() -> ToolDef {
    ToolDef {
        name: SEARCH_DOCUMENTS.into(),
        description: "Search the uploaded documents for passages about a query. Use it when \
                      the sources you have do not answer the question. Results are numbered \
                      sources; cite them as [n]."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, in a few words or a question."}
            },
            "required": ["query"],
            "additionalProperties": false
        }),
    }
}

/// The query of a call's arguments, or why there is none.
pub(super) fn query(args: &serde_json::Map<String, Value>) -> Result<String, String> {
    match args.get("query").and_then(Value::as_str).map(str::trim) {
        Some(q) if !q.is_empty() => Ok(q.chars().take(MAX_QUERY_CHARS).collect()),
        _ => Err("search_documents takes a non-empty `query` string".into()),
    }
}

/// The sources of a turn so far, numbered as the model was shown them. The searches of a
/// round add to it as they finish.
pub(super) struct Numbering {
    sources: Mutex<Vec<Source>>,
    before: usize,
}

impl Numbering {
    pub fn new(sources: &[Source]) -> Self {
        Self {
            sources: Mutex::new(sources.to_vec()),
            before: sources.len(),
        }
    }

    /// Gives each found source its number: the one it already has in the turn, else the
    /// next free one.
    fn number(&self, found: &mut [Source]) {
        let mut all = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        for s in found {
            let known = all
                .iter()
                .find(|k| k.doc_id == s.doc_id && k.chunk == s.chunk);
            match known {
                Some(k) => s.n = k.n,
                None => {
                    s.n = all.len() + 1;
                    all.push(s.clone());
                }
            }
        }
    }

    /// The sources the round added.
    pub fn added(self) -> Vec<Source> {
        let mut all = self.sources.into_inner().unwrap_or_else(|p| p.into_inner());
        all.split_off(self.before.min(all.len()))
    }
}

impl Search {
    /// The event input of a search for `query`.
    pub fn input(&self, query: String) -> SearchInput {
        SearchInput {
            query,
            top_k: self.retrieval.cfg.top_k,
        }
    }

    /// Searches `tenant`'s documents; the sources come numbered for this turn.
    pub async fn run(&self, tenant: &str, query: String, numbering: &Numbering) -> Grounding {
        let r = &self.retrieval;
        let vector: Result<Vec<f32>, RetrievalError> =
            r.embedder.embed_query(&query).await.map_err(Into::into);
        let mut g = r.ground(tenant, query, vector, self.screen).await;
        numbering.number(&mut g.sources);
        g
    }
}

/// What the model is told a search found.
pub(super) fn for_model(g: &Grounding) -> String {
    if let Some((_, message)) = &g.error {
        return format!("error: the search failed: {message}");
    }
    if g.sources.is_empty() {
        return format!("No passage of the documents matches {:?}.", g.query);
    }
    let mut out = format!("Sources found for {:?}:\n", g.query);
    for s in &g.sources {
        out.push_str(&s.listed());
    }
    out.push_str("Cite the sources you use by number.");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn source(doc: &str, chunk: usize) -> Source {
        Source {
            n: 1,
            doc_id: doc.into(),
            title: doc.into(),
            section: String::new(),
            page: None,
            chunk,
            text: format!("text of {doc} {chunk}"),
            score: 0.5,
        }
    }

    #[test]
    fn found_sources_are_numbered_after_the_turn_s_and_keep_known_numbers() {
        let mut first = source("a", 0);
        first.n = 1;
        let mut second = source("b", 0);
        second.n = 2;
        let numbering = Numbering::new(&[first, second]);
        let mut found = vec![source("c", 3), source("b", 0), source("d", 1)];
        numbering.number(&mut found);
        assert_eq!(found.iter().map(|s| s.n).collect::<Vec<_>>(), [3, 2, 4]);
        let mut again = vec![source("d", 1), source("e", 0)];
        numbering.number(&mut again);
        assert_eq!(again.iter().map(|s| s.n).collect::<Vec<_>>(), [4, 5]);
        let added = numbering.added();
        assert_eq!(
            added
                .iter()
                .map(|s| (s.doc_id.as_str(), s.n))
                .collect::<Vec<_>>(),
            [("c", 3), ("d", 4), ("e", 5)]
        );
    }

    #[test]
    fn a_query_must_be_a_non_empty_string() {
        let args = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(query(&args(json!({"query": "  cats  "}))).unwrap(), "cats");
        assert!(query(&args(json!({"query": " "}))).is_err());
        assert!(query(&args(json!({"query": 3}))).is_err());
        assert!(query(&args(json!({}))).is_err());
    }

    #[test]
    fn the_model_is_told_what_was_found_or_that_nothing_was() {
        let mut g = Grounding {
            query: "cats".into(),
            ..Grounding::default()
        };
        assert!(for_model(&g).starts_with("No passage"));
        let mut s = source("pets", 0);
        s.n = 3;
        g.sources.push(s);
        let told = for_model(&g);
        assert!(told.contains("[3] pets: text of pets 0"), "{told}");
    }
}
