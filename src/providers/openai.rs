//! OpenAI-compatible streaming chat completions (OpenAI, vLLM, llama.cpp server, Ollama).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::{ChatRequest, ProviderError, StreamEvent, UpstreamFinish};
use crate::config::{ProviderConfig, Secret, ms};

/// Client for one OpenAI-compatible endpoint; cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    model: String,
    max_tokens: u32,
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;
type SseStream = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// An open completion stream. Dropping it closes the upstream connection, which is how a
/// cancelled turn stops the upstream from generating.
pub struct OpenAiStream {
    events: SseStream,
    pending: VecDeque<StreamEvent>,
    finished: bool,
    done: bool,
}

impl OpenAiProvider {
    /// Builds the HTTP client with the configured connect timeout.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(ms(cfg.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ProviderError::Connect(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            api_key: cfg.api_key.clone(),
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Posts the request with `stream: true` and usage reporting; fails on a non-2xx status.
    pub async fn stream(&self, req: &ChatRequest) -> Result<OpenAiStream, ProviderError> {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if self.max_tokens > 0 {
            body["max_tokens"] = self.max_tokens.into();
        }
        let mut rb = self.http.post(&self.url).json(&body);
        if !self.api_key.is_empty() {
            rb = rb.bearer_auth(self.api_key.expose());
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ProviderError::Connect(e.to_string())
            } else {
                ProviderError::Transport(e.to_string())
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = resp.text().await.unwrap_or_default();
            return Err(ProviderError::Status {
                status: status.as_u16(),
                retry_after,
                body: text.chars().take(300).collect(),
            });
        }
        let bytes: ByteStream = Box::pin(resp.bytes_stream());
        Ok(OpenAiStream {
            events: Box::pin(bytes.eventsource()),
            pending: VecDeque::new(),
            finished: false,
            done: false,
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
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            match self.events.next().await {
                None => {
                    self.done = true;
                    if self.finished {
                        return None;
                    }
                    return Some(Err(ProviderError::Cut));
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    self.done = true;
                    return Some(Err(if self.finished {
                        ProviderError::Transport(e.to_string())
                    } else {
                        ProviderError::Cut
                    }));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ProviderError::Malformed(e.to_string())));
                }
                Some(Ok(event)) => {
                    let data = event.data.trim();
                    if data.is_empty() {
                        continue;
                    }
                    if data == "[DONE]" {
                        self.done = true;
                        return None;
                    }
                    if let Err(e) = self.parse_chunk(data) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn parse_chunk(&mut self, data: &str) -> Result<(), ProviderError> {
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            let shown: String = data.chars().take(120).collect();
            ProviderError::Malformed(format!("{e} in chunk {shown:?}"))
        })?;
        if let Some(err) = chunk.error {
            let shown: String = err.to_string().chars().take(300).collect();
            return Err(ProviderError::Status {
                status: 500,
                retry_after: None,
                body: shown,
            });
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.and_then(|d| d.content)
                && !text.is_empty()
            {
                self.pending.push_back(StreamEvent::Delta(text));
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                let finish = if reason == "length" {
                    UpstreamFinish::Length
                } else {
                    UpstreamFinish::Stop
                };
                self.pending.push_back(StreamEvent::Finish(finish));
            }
        }
        if let Some(u) = chunk.usage {
            self.pending.push_back(StreamEvent::Usage {
                input: u.prompt_tokens,
                output: u.completion_tokens,
            });
        }
        Ok(())
    }
}
