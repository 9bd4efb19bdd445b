//! OpenAI-compatible streaming chat completions (OpenAI, vLLM, llama.cpp server, Ollama).

use serde::Deserialize;

use super::http::{self, Flow, Parsed, SseEvents};
use super::{ChatMessage, ChatRequest, ProviderError, StreamEvent, ToolCallDelta, UpstreamFinish};
use crate::config::{ProviderEntry, Secret};

/// Client for one OpenAI-compatible endpoint; cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    model: String,
    max_tokens: u32,
}

/// An open completion stream. Dropping it closes the upstream connection, which is how a
/// cancelled turn stops the upstream from generating.
pub struct OpenAiStream {
    events: SseEvents,
}

impl OpenAiProvider {
    pub fn new(entry: &ProviderEntry) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http::client(entry)?,
            url: format!("{}/chat/completions", entry.base_url.trim_end_matches('/')),
            api_key: entry.api_key.clone(),
            model: entry.model.clone(),
            max_tokens: entry.max_tokens,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Posts the request with `stream: true` and usage reporting.
    pub async fn stream(&self, req: &ChatRequest) -> Result<OpenAiStream, ProviderError> {
        let messages: Vec<serde_json::Value> =
            req.messages.iter().map(ChatMessage::openai).collect();
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(cap) = req.sampling.output_cap(self.max_tokens) {
            body["max_tokens"] = cap.into();
        }
        req.sampling.openai_fields(&mut body);
        req.tools.openai_fields(&mut body);
        let mut rb = self.http.post(&self.url).json(&body);
        if !self.api_key.is_empty() {
            rb = rb.bearer_auth(self.api_key.expose());
        }
        Ok(OpenAiStream {
            events: SseEvents::new(http::send_sse(rb).await?),
        })
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<CallPiece>>,
}

/// A piece of a streamed tool call (`delta.tool_calls[]`).
#[derive(Deserialize)]
struct CallPiece {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionPiece>,
}

#[derive(Deserialize)]
struct FunctionPiece {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl OpenAiStream {
    /// The next event; `None` after `[DONE]` (or a clean end after `finish_reason`).
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        self.events.next(parse_chunk).await
    }
}

fn parse_chunk(data: &str, out: &mut Parsed) -> Result<Flow, ProviderError> {
    if data == "[DONE]" {
        return Ok(Flow::End);
    }
    let chunk: Chunk = serde_json::from_str(data).map_err(|e| http::malformed(e, data))?;
    if let Some(err) = chunk.error {
        return Err(ProviderError::Status {
            status: 500,
            retry_after: None,
            body: err.to_string().chars().take(300).collect(),
        });
    }
    for choice in chunk.choices {
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                out.pending.push_back(StreamEvent::Delta(text));
            }
            for piece in delta.tool_calls.unwrap_or_default() {
                out.pending
                    .push_back(StreamEvent::ToolCall(call_delta(piece)));
            }
        }
        if let Some(reason) = choice.finish_reason {
            out.finished = true;
            let finish = match reason.as_str() {
                "length" => UpstreamFinish::Length,
                "tool_calls" | "function_call" => UpstreamFinish::ToolCalls,
                _ => UpstreamFinish::Stop,
            };
            out.pending.push_back(StreamEvent::Finish(finish));
        }
    }
    if let Some(u) = chunk.usage {
        out.pending.push_back(StreamEvent::Usage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
        });
    }
    Ok(Flow::Continue)
}

fn call_delta(piece: CallPiece) -> ToolCallDelta {
    let (name, arguments) = piece
        .function
        .map_or((None, None), |f| (f.name, f.arguments));
    ToolCallDelta {
        index: piece.index,
        id: piece.id.filter(|i| !i.is_empty()),
        name: name.filter(|n| !n.is_empty()),
        arguments: arguments.unwrap_or_default(),
    }
}
