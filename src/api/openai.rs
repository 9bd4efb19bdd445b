//! OpenAI-compatible chat: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`. Each request runs confab's full turn (answer cache → retrieval → fallback
//! chain); the RAG model alias adds retrieval, and its sources come back in a `confab`
//! extension field that standard clients ignore. Errors use OpenAI's error shape.

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::http::StatusCode;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use tokio::sync::mpsc::Receiver;
use uuid::Uuid;

use super::strict::Str;
use super::usage::ApiAuth;
use crate::app::AppState;
use crate::auth::Principal;
use crate::chat::sink::ChannelSink;
use crate::error::ErrorCode;
use crate::protocol::{EventBody, FinishReason, Member, TurnMetrics, TurnSnapshot};
use crate::rooms::{QueuedTurn, TurnOwner, room_now_ms};

/// Events buffered between the turn and a slow HTTP reader before the turn is cancelled.
const SINK_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Object)]
pub struct ChatMessageIn {
    /// system, user or assistant.
    pub role: Str,
    pub content: Str,
}

#[derive(Debug, Clone, Object)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`).
    #[oai(nullable)]
    pub include_usage: Option<bool>,
}

/// The OpenAI request; fields confab does not use (temperature, top_p, n…) are accepted and
/// ignored.
#[derive(Debug, Clone, Object)]
pub struct ChatCompletionRequest {
    /// A chain name, or the RAG alias (`openai.rag_model`, default `confab-rag`).
    pub model: Str,
    pub messages: Vec<ChatMessageIn>,
    #[oai(nullable)]
    pub stream: Option<bool>,
    #[oai(nullable)]
    pub stream_options: Option<StreamOptions>,
    /// Shown as the speaker's name in the conversation sent upstream.
    #[oai(nullable)]
    pub user: Option<Str>,
}

#[derive(Debug, Clone, Object)]
pub struct ChatMessageOut {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Object)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessageOut,
    /// stop or length.
    pub finish_reason: String,
}

#[derive(Debug, Clone, Object)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A source the answer may cite as `[n]`.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SourceRef {
    pub n: u32,
    pub doc_id: String,
    pub title: String,
    pub section: String,
    pub page: Option<u32>,
    pub score: f32,
    pub snippet: String,
}

/// confab's extension: which chain and model answered, what it cost, and the sources.
#[derive(Debug, Clone, Default, Object)]
pub struct ConfabInfo {
    pub chain: String,
    pub provider: String,
    pub cached: bool,
    pub cost_usd: f64,
    /// Sources given to the model (RAG alias only).
    pub sources: Vec<SourceRef>,
    /// The `[n]` the answer cites.
    pub citations: Vec<u32>,
}

#[derive(Debug, Clone, Object)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub confab: ConfabInfo,
}

#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ChunkDelta {
    pub role: Option<String>,
    pub content: Option<String>,
}

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    pub finish_reason: Option<String>,
}

/// One `data:` line of a streamed completion (the stream ends with `data: [DONE]`).
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
    /// On the last chunk.
    pub confab: Option<ConfabInfo>,
    /// A failure after the answer started streaming.
    pub error: Option<OpenAiErrorBody>,
}

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OpenAiErrorBody {
    pub message: String,
    /// invalid_request_error, rate_limit_error, api_error…
    #[oai(rename = "type")]
    pub kind: String,
    /// confab's error code (the WebSocket vocabulary).
    pub code: String,
    pub param: Option<String>,
}

#[derive(Debug, Clone, Object)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

#[derive(Debug, Clone, Object)]
pub struct ModelInfo {
    pub id: String,
    /// Always `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, Object)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelInfo>,
}

/// `None` is the closing `[DONE]`.
type ChunkStream = BoxStream<'static, Option<ChatCompletionChunk>>;

#[derive(ApiResponse)]
pub enum CompletionResponse {
    /// The whole answer (`stream` false or absent).
    #[oai(status = 200)]
    Ok(Json<ChatCompletion>),
    /// Server-sent events: chunks, then `data: [DONE]` (`stream: true`).
    #[oai(status = 200)]
    Stream(EventStream<ChunkStream>),
    /// A bad request, an unknown model, a busy or failing upstream: OpenAI's error shape.
    Error(
        StatusCode,
        Json<OpenAiError>,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
}

fn error_kind(status: u16) -> &'static str {
    match status {
        400 | 413 | 415 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

pub(super) fn body(code: ErrorCode, message: String, param: Option<&str>) -> OpenAiErrorBody {
    OpenAiErrorBody {
        message,
        kind: error_kind(code.http_status()).into(),
        code: code.as_str().into(),
        param: param.map(str::to_string),
    }
}

fn fail(code: ErrorCode, message: impl Into<String>, param: Option<&str>) -> CompletionResponse {
    fail_retry(code, message, param, None)
}

/// An error in OpenAI's shape with a `Retry-After` of `retry` seconds.
fn fail_retry(
    code: ErrorCode,
    message: impl Into<String>,
    param: Option<&str>,
    retry: Option<u64>,
) -> CompletionResponse {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    CompletionResponse::Error(
        status,
        Json(OpenAiError {
            error: body(code, message.into(), param),
        }),
        retry,
    )
}

/// What the events of a turn add up to.
#[derive(Default)]
struct Summary {
    model: String,
    chain: String,
    text: String,
    deltas: usize,
    sources: Vec<SourceRef>,
    metrics: Option<TurnMetrics>,
    error: Option<(ErrorCode, String, Option<u64>)>,
    end: Option<FinishReason>,
}

impl Summary {
    /// Folds one event in; true when it was the turn's `end`.
    fn add(&mut self, ev: &EventBody) -> bool {
        match ev {
            EventBody::Start { model, chain, .. } => {
                self.model = model.clone();
                self.chain = chain.clone();
            }
            EventBody::Delta { text } => {
                self.text.push_str(text);
                self.deltas += 1;
            }
            EventBody::Tool { output, .. } => self.sources = sources(output),
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

    fn usage(&self) -> Usage {
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

    fn info(&self) -> ConfabInfo {
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
        }
    }

    /// The error to answer with when the turn failed before any text.
    fn early_failure(&self) -> Option<CompletionResponse> {
        let (code, message, retry_after) = self.error.clone()?;
        if self.deltas > 0 {
            return None;
        }
        Some(fail_retry(code, message, None, retry_after))
    }
}

fn finish_str(f: Option<FinishReason>) -> String {
    match f {
        Some(FinishReason::Length) => "length",
        _ => "stop",
    }
    .into()
}

/// The `tool` event's results as sources.
fn sources(output: &serde_json::Value) -> Vec<SourceRef> {
    output["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| SourceRef {
                    n: r["n"].as_u64().unwrap_or(0) as u32,
                    doc_id: r["doc_id"].as_str().unwrap_or_default().into(),
                    title: r["title"].as_str().unwrap_or_default().into(),
                    section: r["section"].as_str().unwrap_or_default().into(),
                    page: r["page"].as_u64().map(|p| p as u32),
                    score: r["score"].as_f64().unwrap_or(0.0) as f32,
                    snippet: r["snippet"].as_str().unwrap_or_default().into(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The conversation before the last user message, as the turn engine's history.
fn history(
    messages: &[ChatMessageIn],
    speaker: &Member,
) -> Result<(Vec<TurnSnapshot>, String), String> {
    let turns: Vec<&ChatMessageIn> = messages
        .iter()
        .filter(|m| m.role != "system" && m.role != "developer")
        .collect();
    let Some((last, earlier)) = turns.split_last() else {
        return Err("messages must contain a user message".into());
    };
    if last.role != "user" {
        return Err(format!(
            "the last message must have role user, not {:?}",
            last.role
        ));
    }
    if last.content.trim().is_empty() {
        return Err("the last user message is empty".into());
    }
    let turn = |prompt: String, answer: String| TurnSnapshot {
        turn_id: Uuid::new_v4(),
        from: speaker.clone(),
        prompt,
        answer,
        finish_reason: Some(FinishReason::Stop),
        partial: false,
    };
    let mut out: Vec<TurnSnapshot> = Vec::new();
    for m in earlier {
        match m.role.0.as_str() {
            "user" => out.push(turn(m.content.0.clone(), String::new())),
            "assistant" | "tool" => match out.last_mut() {
                Some(t) if t.answer.is_empty() => t.answer = m.content.0.clone(),
                _ => out.push(turn(String::new(), m.content.0.clone())),
            },
            other => return Err(format!("unknown role {other:?}")),
        }
    }
    Ok((out, last.content.0.clone()))
}

/// The OpenAI-compatible routes.
pub struct OpenAiApi {
    pub state: AppState,
}

#[OpenApi]
impl OpenAiApi {
    /// OpenAI-compatible chat completion through confab's turn (cache, retrieval for the RAG
    /// model, fallback chain). `stream: true` answers with server-sent events.
    #[oai(path = "/v1/chat/completions", method = "post")]
    async fn chat_completions(
        &self,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        req: Json<ChatCompletionRequest>,
    ) -> CompletionResponse {
        let req = req.0;
        let state = &self.state;
        let rag = *req.model == state.config.openai.rag_model;
        let chain = if rag {
            state.engine.default_chain().to_string()
        } else {
            req.model.0.clone()
        };
        if !state.engine.has_chain(&chain) {
            return fail(
                ErrorCode::NotFound,
                format!(
                    "model {:?} does not exist; GET /v1/models lists them",
                    req.model
                ),
                Some("model"),
            );
        }
        if state.life.is_draining() {
            return fail(ErrorCode::ShuttingDown, "server is shutting down", None);
        }
        let speaker = Member {
            session_id: Uuid::new_v4(),
            name: req
                .user
                .as_ref()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "user".into()),
        };
        let (history, prompt) = match history(&req.messages, &speaker) {
            Ok(h) => h,
            Err(e) => return fail(ErrorCode::InvalidMessage, e, Some("messages")),
        };
        let limit = state.config.ws.max_prompt_chars;
        if prompt.chars().count() > limit {
            return fail(
                ErrorCode::PromptTooLong,
                format!("the last user message exceeds {limit} characters"),
                Some("messages"),
            );
        }
        let permit = match state.limits.turn(principal.0) {
            Ok(p) => p,
            Err(e) => {
                let retry = e.retry_after_secs();
                return fail_retry(ErrorCode::RateLimited, e.to_string(), None, retry);
            }
        };
        let (sink, mut rx) =
            ChannelSink::new(principal.0.tenant.to_string(), history, SINK_CAPACITY);
        let turn = QueuedTurn {
            turn_id: Uuid::new_v4(),
            from: speaker,
            prompt,
            quality: None,
            use_cache: true,
            chain: Some(chain),
            retrieval: rag,
            owner: TurnOwner {
                principal: principal.0.clone(),
                permit: Some(std::sync::Arc::new(permit)),
            },
        };
        let (engine, life) = (state.engine.clone(), state.life.clone());
        state
            .life
            .turns
            .spawn(async move { engine.run(&sink, turn, &life).await });

        // Read up to the first text (or the end): a turn that fails before any text is an
        // HTTP error, as OpenAI clients expect.
        let mut summary = Summary::default();
        let mut buffered = Vec::new();
        while let Some(ev) = rx.recv().await {
            let is_end = summary.add(&ev);
            let is_delta = matches!(ev, EventBody::Delta { .. });
            buffered.push(ev);
            if is_end || is_delta {
                break;
            }
        }
        if let Some(resp) = summary.early_failure() {
            return resp;
        }
        let id = format!("chatcmpl-{}", Uuid::new_v4().simple());
        let created = room_now_ms() / 1000;
        if req.stream != Some(true) {
            while summary.end.is_none() {
                match rx.recv().await {
                    Some(ev) => {
                        summary.add(&ev);
                    }
                    None => break,
                }
            }
            if let Some(resp) = summary.early_failure() {
                return resp;
            }
            return CompletionResponse::Ok(Json(ChatCompletion {
                id,
                object: "chat.completion".into(),
                created,
                model: summary.model.clone(),
                choices: vec![Choice {
                    index: 0,
                    message: ChatMessageOut {
                        role: "assistant".into(),
                        content: summary.text.clone(),
                    },
                    finish_reason: finish_str(summary.end),
                }],
                usage: summary.usage(),
                confab: summary.info(),
            }));
        }
        let include_usage = req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let stream = chunk_stream(id, created, buffered, rx, include_usage);
        CompletionResponse::Stream(EventStream::new(stream).to_event(|chunk| match chunk {
            Some(c) => Event::message(poem_openapi::types::ToJSON::to_json_string(&c)),
            None => Event::message("[DONE]"),
        }))
    }

    /// The models: the RAG alias and every chain.
    #[oai(path = "/v1/models", method = "get")]
    async fn models(&self, _auth: ApiAuth) -> Json<ModelList> {
        let cfg = &self.state.config;
        let data = std::iter::once(cfg.openai.rag_model.clone())
            .chain(cfg.chains.keys().cloned())
            .map(|id| ModelInfo {
                id,
                object: "model".into(),
                created: 0,
                owned_by: "confab".into(),
            })
            .collect();
        Json(ModelList {
            object: "list".into(),
            data,
        })
    }
}

/// Turns a turn's events into OpenAI chunks: the role (at `start`), the text, then the finish
/// reason with confab's extension, usage if asked, and `[DONE]`.
struct Chunker {
    id: String,
    created: u64,
    summary: Summary,
    include_usage: bool,
}

impl Chunker {
    fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.summary.model.clone(),
            choices,
            usage: None,
            confab: None,
            error: None,
        }
    }

    fn choice(delta: ChunkDelta, finish_reason: Option<String>) -> Vec<ChunkChoice> {
        vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }]
    }

    fn chunks(&mut self, ev: EventBody) -> Vec<ChatCompletionChunk> {
        self.summary.add(&ev);
        match ev {
            EventBody::Start { .. } => {
                let delta = ChunkDelta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                };
                vec![self.chunk(Self::choice(delta, None))]
            }
            EventBody::Delta { text } => {
                let delta = ChunkDelta {
                    role: None,
                    content: Some(text),
                };
                vec![self.chunk(Self::choice(delta, None))]
            }
            EventBody::Error { code, message, .. } => {
                let mut c = self.chunk(Vec::new());
                c.error = Some(body(code, message, None));
                vec![c]
            }
            EventBody::End { finish_reason, .. } => {
                let mut last = self.chunk(Self::choice(
                    ChunkDelta::default(),
                    Some(finish_str(Some(finish_reason))),
                ));
                last.confab = Some(self.summary.info());
                let mut out = vec![last];
                if self.include_usage {
                    let mut u = self.chunk(Vec::new());
                    u.usage = Some(self.summary.usage());
                    out.push(u);
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

fn chunk_stream(
    id: String,
    created: u64,
    buffered: Vec<EventBody>,
    mut rx: Receiver<EventBody>,
    include_usage: bool,
) -> ChunkStream {
    let (tx, out) = tokio::sync::mpsc::channel::<Option<ChatCompletionChunk>>(64);
    tokio::spawn(async move {
        let mut conv = Chunker {
            id,
            created,
            summary: Summary::default(),
            include_usage,
        };
        let mut early = buffered.into_iter();
        loop {
            let ev = match early.next() {
                Some(ev) => ev,
                None => match rx.recv().await {
                    Some(ev) => ev,
                    None => break,
                },
            };
            for c in conv.chunks(ev) {
                // The client left: dropping `rx` makes the sink cancel the turn.
                if tx.send(Some(c)).await.is_err() {
                    return;
                }
            }
            if conv.summary.end.is_some() {
                break;
            }
        }
        let _ = tx.send(None).await;
    });
    futures_util::stream::unfold(
        out,
        |mut out| async move { out.recv().await.map(|c| (c, out)) },
    )
    .boxed()
}
