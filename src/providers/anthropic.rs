//! Anthropic Messages API, streaming.

use serde::Deserialize;

use super::http::{self, Flow, Parsed, SseEvents};
use super::{ChatMessage, ChatRequest, ProviderError, Role, StreamEvent, UpstreamFinish};
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
    /// From `message_start`; reported with the output tokens of `message_delta`.
    input_tokens: u64,
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
    /// because the API expects user and assistant to alternate.
    pub async fn stream(&self, req: &ChatRequest) -> Result<AnthropicStream, ProviderError> {
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut messages: Vec<ChatMessage> = Vec::new();
        for m in req.messages.iter().filter(|m| m.role != Role::System) {
            match messages.last_mut() {
                Some(last) if last.role == m.role => {
                    last.content.push_str("\n\n");
                    last.content.push_str(&m.content);
                }
                _ => messages.push(m.clone()),
            }
        }
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
        let rb = self
            .http
            .post(&self.url)
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&body);
        Ok(AnthropicStream {
            events: SseEvents::new(http::send_sse(rb).await?),
            input_tokens: 0,
        })
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockDelta {
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
struct BlockDelta {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

impl AnthropicStream {
    /// The next event; `None` after `message_stop`.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        let input_tokens = &mut self.input_tokens;
        self.events
            .next(|data, out| parse_event(data, out, input_tokens))
            .await
    }
}

fn parse_event(
    data: &str,
    out: &mut Parsed,
    input_tokens: &mut u64,
) -> Result<Flow, ProviderError> {
    let parsed: Event = serde_json::from_str(data).map_err(|e| http::malformed(e, data))?;
    match parsed {
        Event::MessageStart { message } => {
            *input_tokens = message.usage.map(|u| u.input_tokens).unwrap_or(0);
        }
        Event::ContentBlockDelta { delta } => {
            if let Some(t) = delta.text.filter(|t| !t.is_empty()) {
                out.pending.push_back(StreamEvent::Delta(t));
            }
        }
        Event::MessageDelta { delta, usage } => {
            if let Some(reason) = delta.stop_reason {
                out.finished = true;
                out.pending
                    .push_back(StreamEvent::Finish(if reason == "max_tokens" {
                        UpstreamFinish::Length
                    } else {
                        UpstreamFinish::Stop
                    }));
            }
            if let Some(u) = usage {
                out.pending.push_back(StreamEvent::Usage {
                    input: *input_tokens,
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
