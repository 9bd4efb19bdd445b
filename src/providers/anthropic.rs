//! Anthropic Messages API, streaming.

use serde::Deserialize;

use super::http::{self, Flow, Parsed, SseEvents};
use serde_json::{Value, json};

use super::{
    ChatMessage, ChatRequest, ProviderError, Role, StreamEvent, ToolCallDelta, UpstreamFinish,
};
use crate::config::{ProviderEntry, Secret};

const API_VERSION: &str = "2023-06-01";

/// Client for the Messages API; cheap to clone.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    model: String,
    max_tokens: u32,
}

/// An open message stream; dropping it closes the connection.
pub struct AnthropicStream {
    events: SseEvents,
    state: StreamState,
}

/// What a stream remembers between events.
#[derive(Default)]
struct StreamState {
    /// From `message_start`; reported with the output tokens of `message_delta`.
    input_tokens: u64,
    /// The content-block indices that are `tool_use` blocks; a call's position here is its
    /// OpenAI-style call index.
    tool_blocks: Vec<u32>,
}

impl AnthropicProvider {
    pub fn new(entry: &ProviderEntry) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http::client(entry)?,
            url: format!("{}/messages", entry.base_url.trim_end_matches('/')),
            api_key: entry.api_key.clone(),
            model: entry.model.clone(),
            max_tokens: entry.max_tokens.max(1),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The system prompt goes in its own field; consecutive messages of one role are merged
    /// because the API expects user and assistant to alternate (tool results travel as a
    /// user message of `tool_result` blocks).
    pub async fn stream(&self, req: &ChatRequest) -> Result<AnthropicStream, ProviderError> {
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let messages = messages(&req.messages);
        let max_tokens = req
            .sampling
            .output_cap(self.max_tokens)
            .unwrap_or(self.max_tokens);
        let mut body = serde_json::json!({
            "model": self.model,
            "max_tokens": max_tokens.max(1),
            "system": system.join("\n\n"),
            "messages": messages,
            "stream": true,
        });
        req.sampling.anthropic_fields(&mut body);
        req.tools.anthropic_fields(&mut body);
        let rb = self
            .http
            .post(&self.url)
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&body);
        Ok(AnthropicStream {
            events: SseEvents::new(http::send_sse(rb).await?),
            state: StreamState::default(),
        })
    }
}

/// The conversation as Messages API turns: same-role neighbours merged, text joined as one
/// string where a turn is only text (as before tools existed), content blocks otherwise.
fn messages(all: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in all.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = blocks(m);
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, blocks)| {
            let texts: Option<Vec<&str>> = blocks
                .iter()
                .map(|b| (b["type"] == "text").then(|| b["text"].as_str().unwrap_or("")))
                .collect();
            let content = match texts {
                Some(t) => json!(t.join("\n\n")),
                None => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect()
}

/// One message as (role, content blocks).
fn blocks(m: &ChatMessage) -> (&'static str, Vec<Value>) {
    let text = || json!({"type": "text", "text": m.content});
    match m.role {
        Role::Tool => {
            let result = json!({"type": "tool_result",
                "tool_use_id": m.tool_call_id.clone().unwrap_or_default(), "content": m.content});
            ("user", vec![result])
        }
        Role::Assistant => {
            let mut b: Vec<Value> = Vec::new();
            if !m.content.is_empty() || m.tool_calls.is_empty() {
                b.push(text());
            }
            b.extend(m.tool_calls.iter().map(super::ToolCall::anthropic));
            ("assistant", b)
        }
        Role::User | Role::System => ("user", vec![text()]),
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: Block,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<OutUsage>,
    },
    MessageStop,
    Error {
        error: serde_json::Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<InUsage>,
}

#[derive(Deserialize)]
struct InUsage {
    #[serde(default)]
    input_tokens: u64,
}

#[derive(Deserialize)]
struct OutUsage {
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct BlockDelta {
    #[serde(default)]
    text: Option<String>,
    /// A piece of a `tool_use` block's input (`input_json_delta`).
    #[serde(default)]
    partial_json: Option<String>,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

impl AnthropicStream {
    /// The next event; `None` after `message_stop`.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        let state = &mut self.state;
        self.events
            .next(|data, out| parse_event(data, out, state))
            .await
    }
}

fn parse_event(data: &str, out: &mut Parsed, st: &mut StreamState) -> Result<Flow, ProviderError> {
    let parsed: Event = serde_json::from_str(data).map_err(|e| http::malformed(e, data))?;
    match parsed {
        Event::MessageStart { message } => {
            st.input_tokens = message.usage.map(|u| u.input_tokens).unwrap_or(0);
        }
        Event::ContentBlockStart {
            index,
            content_block,
        } if content_block.kind == "tool_use" => {
            st.tool_blocks.push(index);
            out.pending.push_back(StreamEvent::ToolCall(ToolCallDelta {
                index: (st.tool_blocks.len() - 1) as u32,
                id: content_block.id,
                name: content_block.name,
                arguments: String::new(),
            }));
        }
        Event::ContentBlockStart { .. } => {}
        Event::ContentBlockDelta { index, delta } => {
            if let Some(t) = delta.text.filter(|t| !t.is_empty()) {
                out.pending.push_back(StreamEvent::Delta(t));
            }
            let call = st.tool_blocks.iter().position(|&b| b == index);
            if let (Some(call), Some(json)) = (call, delta.partial_json) {
                out.pending.push_back(StreamEvent::ToolCall(ToolCallDelta {
                    index: call as u32,
                    id: None,
                    name: None,
                    arguments: json,
                }));
            }
        }
        Event::MessageDelta { delta, usage } => {
            if let Some(reason) = delta.stop_reason {
                out.finished = true;
                let finish = match reason.as_str() {
                    "max_tokens" => UpstreamFinish::Length,
                    "tool_use" => UpstreamFinish::ToolCalls,
                    _ => UpstreamFinish::Stop,
                };
                out.pending.push_back(StreamEvent::Finish(finish));
            }
            if let Some(u) = usage {
                out.pending.push_back(StreamEvent::Usage {
                    input: st.input_tokens,
                    output: u.output_tokens,
                });
            }
        }
        Event::MessageStop => {
            out.finished = true;
            return Ok(Flow::End);
        }
        Event::Error { error } => {
            let overloaded = error["type"] == "overloaded_error";
            return Err(ProviderError::Status {
                status: if overloaded { 529 } else { 500 },
                retry_after: None,
                body: error.to_string().chars().take(300).collect(),
            });
        }
        Event::Other => {}
    }
    Ok(Flow::Continue)
}
