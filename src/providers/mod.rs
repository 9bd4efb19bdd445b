//! Upstream model providers behind one small enum-dispatched interface.
//!
//! A provider turns a [`ChatRequest`] into a stream of [`StreamEvent`]s. Timeouts between
//! events are the caller's business (the turn engine knows which phase it is in); providers
//! only report what the upstream did.

mod anthropic;
mod breaker;
pub mod extractive;
mod http;
mod openai;
pub mod probe;
mod sampling;
mod tools;

use std::time::Duration;

pub use anthropic::{AnthropicProvider, AnthropicStream};
pub use breaker::{BreakerState, CircuitBreaker};
pub use extractive::ExtractiveStream;
pub use openai::{OpenAiProvider, OpenAiStream};
pub use sampling::Sampling;
pub use tools::{CallBuilder, ToolCall, ToolCallDelta, ToolChoice, ToolDef, Tools};

use crate::config::{ProviderEntry, ProviderKind};
use crate::error::ErrorCode;

/// Who said a message in the conversation sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering one call of the assistant message before it.
    Tool,
}

/// One message of the conversation sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The calls an assistant message made.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The message in an OpenAI chat-completions body.
    pub fn openai(&self) -> serde_json::Value {
        let mut m = serde_json::json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            if self.content.is_empty() {
                m["content"] = serde_json::Value::Null;
            }
            let calls = self.tool_calls.iter().map(ToolCall::openai).collect();
            m["tool_calls"] = serde_json::Value::Array(calls);
        }
        if let Some(id) = &self.tool_call_id {
            m["tool_call_id"] = id.clone().into();
        }
        m
    }
}

/// A retrieved passage offered to the model, cited as `[n]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Source {
    /// 1-based citation number.
    pub n: usize,
    pub doc_id: String,
    pub title: String,
    /// Heading path inside the document, empty when it has none.
    pub section: String,
    pub page: Option<u32>,
    pub chunk: usize,
    pub text: String,
    pub score: f32,
}

impl Source {
    /// The place of a source: its title, and its section when that says more.
    pub fn place(&self) -> String {
        let mut p = if self.section.is_empty() || self.section == self.title {
            self.title.clone()
        } else {
            format!("{} › {}", self.title, self.section)
        };
        if let Some(page) = self.page {
            p.push_str(&format!(" (page {page})"));
        }
        p
    }

    /// The source as a model is shown it: `[n] place: text`, one line.
    pub fn listed(&self) -> String {
        format!("[{}] {}: {}\n", self.n, self.place(), self.text)
    }
}

/// What the turn engine asks of a provider.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// The user's question alone (the extractive provider matches against it).
    pub query: String,
    /// Retrieved passages, already numbered and listed in the messages.
    pub sources: Vec<Source>,
    /// The client's sampling settings (the OpenAI endpoint's; rooms send none).
    pub sampling: Sampling,
    /// The functions the model may call.
    pub tools: Tools,
}

/// Why the upstream stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFinish {
    Stop,
    Length,
    /// The answer is one or more tool calls.
    ToolCalls,
}

/// One thing the upstream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Delta(String),
    ToolCall(ToolCallDelta),
    Finish(UpstreamFinish),
    Usage { input: u64, output: u64 },
}

/// How an upstream call failed; mapped to wire codes in [`crate::error`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("upstream unreachable: {0}")]
    Connect(String),
    #[error("upstream answered HTTP {status}: {body}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("upstream sent an invalid stream: {0}")]
    Malformed(String),
    #[error("upstream stream ended before it finished")]
    Cut,
    #[error("upstream transport error: {0}")]
    Transport(String),
}

/// Every provider confab can call (enum dispatch: no boxing on the token path).
#[derive(Debug, Clone)]
pub enum Provider {
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
    Extractive,
}

/// A running upstream stream.
pub enum ProviderStream {
    OpenAi(OpenAiStream),
    Anthropic(AnthropicStream),
    Extractive(ExtractiveStream),
}

impl Provider {
    /// Builds the provider described by a config entry.
    pub fn from_entry(entry: &ProviderEntry) -> Result<Self, ProviderError> {
        Ok(match entry.kind {
            ProviderKind::Openai => Provider::OpenAi(OpenAiProvider::new(entry)?),
            ProviderKind::Anthropic => Provider::Anthropic(AnthropicProvider::new(entry)?),
            ProviderKind::Extractive => Provider::Extractive,
        })
    }

    /// The model name reported in `start` and `metrics`.
    pub fn model(&self) -> &str {
        match self {
            Provider::OpenAi(p) => p.model(),
            Provider::Anthropic(p) => p.model(),
            Provider::Extractive => extractive::MODEL,
        }
    }

    /// Sends the request; resolves when the upstream accepted it and the stream is open.
    pub async fn stream(&self, req: &ChatRequest) -> Result<ProviderStream, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.stream(req).await.map(ProviderStream::OpenAi),
            Provider::Anthropic(p) => p.stream(req).await.map(ProviderStream::Anthropic),
            Provider::Extractive => Ok(ProviderStream::Extractive(extractive::answer(req))),
        }
    }
}

impl ProviderStream {
    /// The next event; `None` once the upstream finished cleanly.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        match self {
            ProviderStream::OpenAi(s) => s.next().await,
            ProviderStream::Anthropic(s) => s.next().await,
            ProviderStream::Extractive(s) => s.next().await,
        }
    }
}

impl From<&ProviderError> for ErrorCode {
    fn from(e: &ProviderError) -> Self {
        use ProviderError as P;
        match e {
            P::Connect(_) | P::Transport(_) => ErrorCode::UpstreamUnavailable,
            P::Status { status: 429, .. } => ErrorCode::UpstreamRateLimited,
            P::Status { .. } => ErrorCode::UpstreamError,
            P::Malformed(_) => ErrorCode::UpstreamProtocol,
            P::Cut => ErrorCode::UpstreamCut,
        }
    }
}
