//! The typed `input` and `output` of `tool` events. confab's own tools have fixed shapes
//! (described in the JSON Schema); any other tool's JSON passes through as it is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// The name of the retrieval tool event.
pub const SEARCH_DOCUMENTS: &str = "search_documents";
/// The name of the prompt-screen tool event.
pub const SCREEN_PROMPT: &str = "screen_prompt";

/// What a tool was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolInput {
    /// `search_documents`: the retrieval query.
    SearchDocuments(SearchInput),
    /// `screen_prompt`: what was screened.
    ScreenPrompt(ScreenInput),
    /// Any other tool's arguments.
    Other(serde_json::Value),
}

/// What a tool answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolOutput {
    /// `search_documents`: the sources given to the model.
    SearchDocuments(SearchOutput),
    /// `screen_prompt`: the rules the prompt tripped.
    ScreenPrompt(ScreenOutput),
    /// Any other tool's result.
    Other(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchInput {
    pub query: String,
    pub top_k: usize,
}

/// The result of `search_documents`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct SearchOutput {
    /// The sources the answer may cite as `[n]`, best first.
    pub results: Vec<SourceResult>,
    /// Hits left out because another document holds the same text.
    #[serde(default)]
    pub dropped_duplicates: usize,
    /// Hits that tripped the injection screen (dropped, or kept and flagged).
    #[serde(default)]
    pub screened: Vec<ScreenedChunk>,
    /// Set when retrieval failed; the turn then goes on without sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

/// One source as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SourceResult {
    /// The number the answer cites it by.
    pub n: usize,
    pub doc_id: String,
    pub title: String,
    /// Heading path inside the document, " › "-joined.
    pub section: String,
    /// First page of the chunk (PDFs).
    pub page: Option<u32>,
    pub chunk: usize,
    pub score: f32,
    /// The first 300 characters of the chunk.
    pub snippet: String,
    /// The screen rule it tripped, when kept and flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged: Option<String>,
}

/// A retrieved chunk that tripped the injection screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreenedChunk {
    pub doc_id: String,
    pub chunk: usize,
    pub rule: String,
    /// `dropped` (kept from the model) or `flagged`.
    pub action: String,
}

/// Why a tool failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreenInput {
    /// What was screened (`prompt`).
    pub source: String,
}

/// The result of `screen_prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreenOutput {
    pub flagged: Vec<ScreenFlag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreenFlag {
    pub source: String,
    pub rule: String,
    pub action: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_tool_shape_reads_back_as_itself() {
        let search = ToolOutput::SearchDocuments(SearchOutput {
            results: vec![SourceResult {
                n: 1,
                doc_id: "d".into(),
                title: "T".into(),
                section: "S".into(),
                page: None,
                chunk: 0,
                score: 0.5,
                snippet: "x".into(),
                flagged: None,
            }],
            ..SearchOutput::default()
        });
        let screen = ToolOutput::ScreenPrompt(ScreenOutput {
            flagged: vec![ScreenFlag {
                source: "prompt".into(),
                rule: "r".into(),
                action: "flagged".into(),
            }],
        });
        let other = ToolOutput::Other(serde_json::json!({ "weather": "sunny" }));
        for out in [search, screen, other] {
            let json = serde_json::to_string(&out).unwrap();
            assert_eq!(serde_json::from_str::<ToolOutput>(&json).unwrap(), out);
        }
    }

    #[test]
    fn a_missing_page_is_null_on_the_wire() {
        let r = SourceResult {
            n: 1,
            doc_id: "d".into(),
            title: String::new(),
            section: String::new(),
            page: None,
            chunk: 2,
            score: 0.1,
            snippet: String::new(),
            flagged: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["page"].is_null() && v.get("flagged").is_none(), "{v}");
    }
}
