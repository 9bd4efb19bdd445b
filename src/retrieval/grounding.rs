//! What retrieval gave one turn: the sources the model saw, what the screen kept out, and
//! why there are none when retrieval failed. A domain value: the turn engine renders it as
//! the `search_documents` tool event, and the answer cache keeps it to replay that event.

use std::time::Duration;

use crate::error::ErrorCode;
use crate::protocol::{ScreenedChunk, SearchInput, SearchOutput, SourceResult, ToolError};
use crate::providers::Source;

/// Characters of a chunk shown to clients as its snippet.
const SNIPPET_CHARS: usize = 300;

/// A retrieved chunk kept from the model, or kept and marked, by the injection screen.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened {
    pub doc_id: String,
    pub chunk: usize,
    pub rule: &'static str,
    /// `dropped` or `flagged`.
    pub action: &'static str,
}

/// The retrieval phase's result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grounding {
    pub query: String,
    pub top_k: usize,
    /// Given to the model, numbered from 1.
    pub sources: Vec<Source>,
    /// Per source: the screen rule it tripped when kept and flagged.
    pub flags: Vec<Option<&'static str>>,
    pub dropped_duplicates: usize,
    pub screened: Vec<Screened>,
    /// Why there are no sources, when retrieval failed.
    pub error: Option<(ErrorCode, String)>,
    pub took: Duration,
}

impl Grounding {
    /// The tool's input as clients see it.
    pub fn input(&self) -> SearchInput {
        SearchInput {
            query: self.query.clone(),
            top_k: self.top_k,
        }
    }

    /// The tool's output as clients see it.
    pub fn output(&self) -> SearchOutput {
        let results = self
            .sources
            .iter()
            .zip(self.flags.iter().chain(std::iter::repeat(&None)))
            .map(|(s, flag)| SourceResult {
                n: s.n,
                doc_id: s.doc_id.clone(),
                title: s.title.clone(),
                section: s.section.clone(),
                page: s.page,
                chunk: s.chunk,
                score: s.score,
                snippet: s.text.chars().take(SNIPPET_CHARS).collect(),
                flagged: flag.map(str::to_string),
            })
            .collect();
        let screened = self
            .screened
            .iter()
            .map(|s| ScreenedChunk {
                doc_id: s.doc_id.clone(),
                chunk: s.chunk,
                rule: s.rule.into(),
                action: s.action.into(),
            })
            .collect();
        SearchOutput {
            results,
            dropped_duplicates: self.dropped_duplicates,
            screened,
            error: self.error.as_ref().map(|(code, message)| ToolError {
                code: *code,
                message: message.clone(),
            }),
        }
    }

    /// Bytes it holds (the answer cache weighs entries by it).
    pub fn weight(&self) -> usize {
        self.query.len()
            + self
                .sources
                .iter()
                .map(|s| s.text.len() + s.title.len() + s.section.len() + s.doc_id.len() + 64)
                .sum::<usize>()
            + self.screened.len() * 64
            + self.error.as_ref().map_or(0, |(_, m)| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(n: usize, text: &str) -> Source {
        Source {
            n,
            doc_id: format!("doc{n}"),
            title: "T".into(),
            section: String::new(),
            page: Some(3),
            chunk: n,
            text: text.into(),
            score: 0.5,
        }
    }

    #[test]
    fn output_numbers_sources_and_cuts_snippets() {
        let g = Grounding {
            query: "q".into(),
            top_k: 5,
            sources: vec![source(1, &"é".repeat(400)), source(2, "short")],
            flags: vec![None, Some("ignore_previous")],
            ..Grounding::default()
        };
        let out = g.output();
        assert_eq!(out.results.len(), 2);
        assert_eq!(out.results[0].snippet.chars().count(), SNIPPET_CHARS);
        assert_eq!(out.results[1].flagged.as_deref(), Some("ignore_previous"));
        assert_eq!(out.results[1].page, Some(3));
        assert!(out.error.is_none());
    }

    #[test]
    fn a_failure_is_reported_with_its_code() {
        let g = Grounding {
            error: Some((ErrorCode::Overloaded, "queue full".into())),
            ..Grounding::default()
        };
        let out = g.output();
        assert!(out.results.is_empty());
        assert_eq!(out.error.map(|e| e.code), Some(ErrorCode::Overloaded));
    }
}
