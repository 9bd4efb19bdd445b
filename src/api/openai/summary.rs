//! What the events of one turn add up to: the text, the model that answered, the sources,
//! the usage and how it ended. Both the whole response and the stream read it.

use super::sink::Out;
use super::types::{
    CompletionResponse, ConfabInfo, FunctionCallOut, SourceRef, ToolCallOut, ToolTrace, Usage,
    fail_retry,
};
use crate::error::ErrorCode;
use crate::protocol::{EventBody, FinishReason, SourceResult, ToolOutput, TurnMetrics};
use crate::providers::CallBuilder;
use poem_openapi::types::Any;

/// What the events of a turn add up to.
#[derive(Default)]
pub(super) struct Summary {
    pub model: String,
    pub chain: String,
    pub text: String,
    pub deltas: usize,
    pub sources: Vec<SourceRef>,
    pub metrics: Option<TurnMetrics>,
    pub error: Option<(ErrorCode, String, Option<u64>)>,
    pub end: Option<FinishReason>,
    /// The tool calls for the client, assembled.
    pub calls: CallBuilder,
    /// Server-side tool calls that ended.
    pub tools: Vec<ToolTrace>,
}

impl Summary {
    /// Folds one output in; true when it was the turn's `end`.
    pub fn add_out(&mut self, out: &Out) -> bool {
        match out {
            Out::Event(ev) => self.add(ev),
            Out::Call(piece) => {
                self.calls.push(&mut piece.clone());
                false
            }
        }
    }

    /// The assembled calls in OpenAI's shape; `None` when there are none.
    pub fn tool_calls(&self) -> Option<Vec<ToolCallOut>> {
        if self.calls.is_empty() {
            return None;
        }
        let calls = self.calls.calls().iter().cloned().map(|c| ToolCallOut {
            id: c.id,
            kind: "function".into(),
            function: FunctionCallOut {
                name: c.name,
                arguments: c.arguments,
            },
        });
        Some(calls.collect())
    }

    /// Folds one event in; true when it was the turn's `end`.
    pub fn add(&mut self, ev: &EventBody) -> bool {
        match ev {
            EventBody::Start { model, chain, .. } => {
                self.model = model.clone();
                self.chain = chain.clone();
            }
            EventBody::Delta { text } => {
                self.text.push_str(text);
                self.deltas += 1;
            }
            EventBody::Tool { output, .. } => {
                // Searches (confab's before the answer, the model's follow-ups) add
                // sources; a follow-up's known sources keep their number.
                if let ToolOutput::SearchDocuments(out) = output {
                    for r in &out.results {
                        if !self.sources.iter().any(|s| s.n as usize == r.n) {
                            self.sources.push(source_ref(r));
                        }
                    }
                }
                if let Some(t) = trace(ev).filter(|t| t.status != "running") {
                    self.tools.push(t);
                }
            }
            EventBody::Metrics(m) => {
                self.model = m.model.clone();
                self.metrics = Some(m.clone());
            }
            EventBody::Error {
                code,
                message,
                retry_after_ms,
                ..
            } => {
                self.error = Some((
                    *code,
                    message.clone(),
                    retry_after_ms.map(|ms| ms.div_ceil(1000)),
                ))
            }
            EventBody::End { finish_reason, .. } => {
                self.end = Some(*finish_reason);
                return true;
            }
            _ => {}
        }
        false
    }

    pub fn usage(&self) -> Usage {
        let (i, o) = self
            .metrics
            .as_ref()
            .map_or((0, 0), |m| (m.tokens_in, m.tokens_out));
        Usage {
            prompt_tokens: i,
            completion_tokens: o,
            total_tokens: i + o,
        }
    }

    pub fn info(&self) -> ConfabInfo {
        let m = self.metrics.as_ref();
        ConfabInfo {
            chain: self.chain.clone(),
            provider: m.map(|m| m.provider.clone()).unwrap_or_default(),
            cached: m.is_some_and(|m| m.cached),
            cost_usd: m.map_or(0.0, |m| m.cost_usd),
            sources: self.sources.clone(),
            citations: m
                .map(|m| m.citations.iter().map(|&c| c as u32).collect())
                .unwrap_or_default(),
            tools: self.tools.clone(),
        }
    }

    /// The error to answer with when the turn failed before any text.
    pub fn early_failure(&self) -> Option<CompletionResponse> {
        let (code, message, retry_after) = self.error.clone()?;
        if self.deltas > 0 || !self.calls.is_empty() {
            return None;
        }
        Some(fail_retry(code, message, None, retry_after))
    }
}

pub(super) fn finish_str(f: Option<FinishReason>) -> String {
    match f {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::ToolCalls) => "tool_calls",
        _ => "stop",
    }
    .into()
}

/// A model's call of a server-side tool as the OpenAI extension shows it; `None` for
/// other events and confab's own steps.
pub(super) fn trace(ev: &EventBody) -> Option<ToolTrace> {
    let EventBody::Tool {
        name,
        call_id: Some(call_id),
        server,
        status,
        input,
        output,
        error,
        duration_ms,
        cost_usd,
    } = ev
    else {
        return None;
    };
    let json = |v: serde_json::Result<serde_json::Value>| Any(v.unwrap_or_default());
    Some(ToolTrace {
        call_id: call_id.clone(),
        name: name.clone(),
        server: server.clone(),
        status: status.as_str().into(),
        input: json(serde_json::to_value(input)),
        output: json(serde_json::to_value(output)),
        error: error.clone(),
        duration_ms: *duration_ms,
        cost_usd: *cost_usd,
    })
}

/// A `search_documents` result as the OpenAI extension shows it.
fn source_ref(r: &SourceResult) -> SourceRef {
    SourceRef {
        n: r.n as u32,
        doc_id: r.doc_id.clone(),
        title: r.title.clone(),
        section: r.section.clone(),
        page: r.page,
        score: r.score,
        snippet: r.snippet.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::tests::events;

    #[test]
    fn the_events_add_up_to_text_sources_and_usage() {
        let mut s = Summary::default();
        let ends: Vec<bool> = events().iter().map(|e| s.add(e)).collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1, "only end ends");
        assert_eq!(s.text, "Paris [1]");
        assert_eq!(s.deltas, 2);
        assert_eq!((s.usage().prompt_tokens, s.usage().total_tokens), (10, 15));
        let info = s.info();
        assert_eq!(info.sources[0].doc_id, "doc-1");
        assert_eq!(info.sources[0].page, Some(4));
        assert_eq!(info.citations, vec![1]);
        assert_eq!(info.provider, "mock");
        assert!(s.early_failure().is_none());
    }

    #[test]
    fn an_error_before_any_text_is_an_early_failure_after_is_not() {
        let error = EventBody::error(ErrorCode::UpstreamError, "boom".into(), None);
        let mut s = Summary::default();
        s.add(&error);
        assert!(s.early_failure().is_some());
        let mut s = Summary::default();
        s.add(&EventBody::Delta { text: "x".into() });
        s.add(&error);
        assert!(
            s.early_failure().is_none(),
            "text went out: the stream reports it"
        );
    }
}
