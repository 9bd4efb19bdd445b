//! OpenAI-compatible chat: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`. Each request runs confab's full turn (answer cache → retrieval → fallback
//! chain); the RAG model alias adds retrieval, and its sources come back in a `confab`
//! extension field that standard clients ignore. Errors use OpenAI's error shape.
//!
//! The files: `types` (the wire types and error shape), `history` (messages → the turn's
//! history), `sink` (the turn's receiving end), `summary` (what the events add up to) and
//! `stream` (events → chunks).

mod history;
mod sampling;
mod sink;
mod stream;
mod summary;
mod tools;
mod types;

use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::OpenApi;
use poem_openapi::payload::{EventStream, Json};
use tokio::sync::mpsc::Receiver;
use tracing::Instrument as _;
use uuid::Uuid;

pub use types::*;

use self::sink::{ClientSink, Out};
use self::summary::{Summary, finish_str};
use super::auth::ApiAuth;
use crate::app::AppState;
use crate::auth::Principal;
use crate::chat::{TurnOwner, TurnRequest};
use crate::error::ErrorCode;
use crate::protocol::{EventBody, Member, unix_ms};

/// Events buffered between the turn and a slow HTTP reader before the turn is cancelled.
const SINK_CAPACITY: usize = 4096;

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
        http: &poem::Request,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        req: Json<ChatCompletionRequest>,
    ) -> CompletionResponse {
        let req = req.0;
        let (mut turn, sink, rx) = match self.turn(&req, principal.0).await {
            Ok(t) => t,
            Err(resp) => return *resp,
        };
        turn.trace = super::trace_of(http.headers());
        let span = crate::chat::turn_span(&turn);
        let trace_id = crate::telemetry::trace_id(&span);
        let (engine, life) = (self.state.engine.clone(), self.state.life.clone());
        let run = async move { engine.run(&sink, turn, &life).await };
        self.state.life.turns.spawn(run.instrument(span));
        respond(req, rx, trace_id).await
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

type Prepared = (TurnRequest, ClientSink, Receiver<Out>);

impl OpenAiApi {
    /// Checks the request (model, messages, prompt size, the caller's turn limit) and
    /// builds its turn with the sink it streams into.
    async fn turn(
        &self,
        req: &ChatCompletionRequest,
        principal: &Principal,
    ) -> Result<Prepared, Box<CompletionResponse>> {
        let state = &self.state;
        let rag = *req.model == state.config.openai.rag_model;
        let chain = if rag {
            state.engine.default_chain().to_string()
        } else {
            req.model.0.clone()
        };
        if !state.engine.has_chain(&chain) {
            let message = format!(
                "model {:?} does not exist; GET /v1/models lists them",
                req.model
            );
            return Err(Box::new(fail(ErrorCode::NotFound, message, Some("model"))));
        }
        if state.life.is_draining() {
            let refusal = fail(ErrorCode::ShuttingDown, "server is shutting down", None);
            return Err(Box::new(refusal));
        }
        let sampling = self.sampling(req, &chain)?;
        let tools = tools::tools(req)
            .map_err(|(m, p)| Box::new(fail(ErrorCode::InvalidMessage, m, Some(p))))?;
        let speaker = speaker(req);
        let invalid_messages = |e| Box::new(fail(ErrorCode::InvalidMessage, e, Some("messages")));
        let conversation =
            history::conversation(&req.messages, &speaker).map_err(invalid_messages)?;
        let client_system = history::system_messages(&req.messages).map_err(invalid_messages)?;
        let prompt = conversation.prompt;
        let limit = state.config.ws.max_prompt_chars;
        if prompt.chars().count() > limit {
            let message = format!("the last user message exceeds {limit} characters");
            return Err(Box::new(fail(
                ErrorCode::PromptTooLong,
                message,
                Some("messages"),
            )));
        }
        let permit = state.limits.turn(principal).await.map_err(|e| {
            let retry = e.retry_after_secs();
            Box::new(fail_retry(ErrorCode::from(&e), e.to_string(), None, retry))
        })?;
        let tenant = principal.tenant.to_string();
        let tools_empty = tools.is_empty();
        let (sink, rx) = ClientSink::new(tenant, conversation.history, SINK_CAPACITY);
        // A tool exchange is this conversation's alone: never answered from the cache.
        let exchanges = tools_empty
            && conversation
                .messages
                .iter()
                .all(|m| m.tool_calls.is_empty() && m.tool_call_id.is_none());
        let turn = TurnRequest {
            turn_id: Uuid::new_v4(),
            from: speaker,
            prompt,
            quality: None,
            // Sampling settings change the answer: such turns neither read nor fill the cache.
            use_cache: sampling.is_default() && exchanges,
            chain: Some(chain),
            retrieval: rag,
            client_history: true,
            sampling,
            client_system,
            tools,
            conversation: Some(conversation.messages),
            // The RAG alias runs confab's own tools; a client's tools replace them.
            server_tools: rag && tools_empty,
            trace: None,
            owner: TurnOwner {
                principal: principal.clone(),
                permit: Some(std::sync::Arc::new(permit)),
            },
        };
        Ok((turn, sink, rx))
    }

    /// The request's sampling settings, if every link of `chain` can honour them.
    fn sampling(
        &self,
        req: &ChatCompletionRequest,
        chain: &str,
    ) -> Result<crate::providers::Sampling, Box<CompletionResponse>> {
        let invalid = |message: String, param: &str| {
            Box::new(fail(ErrorCode::InvalidMessage, message, Some(param)))
        };
        let s = sampling::sampling(req).map_err(|(m, p)| invalid(m, p))?;
        match self.state.engine.refuses(chain, &s) {
            None => Ok(s),
            Some((setting, link, why)) => Err(invalid(
                format!(
                    "{setting} cannot be honoured by link {link:?} of chain {chain:?} ({why}); \
                     leave it out or use a chain without that link"
                ),
                setting,
            )),
        }
    }
}

/// Longest speaker name taken from the `user` field, in characters (as a WebSocket member's).
const MAX_USER_CHARS: usize = 64;

/// The name the conversation sent upstream shows for the asker (the `user` field, cut).
fn speaker(req: &ChatCompletionRequest) -> Member {
    Member {
        session_id: Uuid::new_v4(),
        name: req
            .user
            .as_ref()
            .map(|u| u.trim().chars().take(MAX_USER_CHARS).collect::<String>())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "user".into()),
    }
}

/// Reads up to the first output — text, a call piece, a server-side tool starting — or the
/// end: a turn that fails before any is an HTTP error, as OpenAI clients expect. Then the
/// whole answer, or the stream.
async fn respond(
    req: ChatCompletionRequest,
    mut rx: Receiver<Out>,
    trace_id: Option<String>,
) -> CompletionResponse {
    let mut summary = Summary::default();
    let mut buffered = Vec::new();
    while let Some(out) = rx.recv().await {
        let is_end = summary.add_out(&out);
        // A server-side tool starting is output too: a stream shows it at once.
        let is_output = matches!(
            out,
            Out::Event(
                EventBody::Delta { .. }
                    | EventBody::Tool {
                        call_id: Some(_),
                        ..
                    }
            ) | Out::Call(_)
        );
        buffered.push(out);
        if is_end || is_output {
            break;
        }
    }
    if let Some(resp) = summary.early_failure() {
        return resp;
    }
    let id = format!("chatcmpl-{}", Uuid::new_v4().simple());
    let created = unix_ms() / 1000;
    if req.stream != Some(true) {
        return whole(id, created, summary, rx, trace_id).await;
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let stream = stream::chunk_stream(id, created, buffered, rx, include_usage);
    let events = EventStream::new(stream).to_event(|chunk| match chunk {
        Some(c) => Event::message(poem_openapi::types::ToJSON::to_json_string(&c)),
        None => Event::message("[DONE]"),
    });
    CompletionResponse::Stream(events, trace_id)
}

/// Waits for the turn's end and answers with the whole completion.
async fn whole(
    id: String,
    created: u64,
    mut summary: Summary,
    mut rx: Receiver<Out>,
    trace_id: Option<String>,
) -> CompletionResponse {
    while summary.end.is_none() {
        match rx.recv().await {
            Some(out) => {
                summary.add_out(&out);
            }
            None => break,
        }
    }
    if let Some(resp) = summary.early_failure() {
        return resp;
    }
    let completion = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: summary.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: ChatMessageOut {
                role: "assistant".into(),
                // OpenAI's shape: null content when the answer is only calls.
                content: match (summary.text.is_empty(), summary.calls.is_empty()) {
                    (true, false) => None,
                    _ => Some(summary.text.clone()),
                },
                tool_calls: summary.tool_calls(),
            },
            finish_reason: finish_str(summary.end),
        }],
        usage: summary.usage(),
        confab: summary.info(),
    };
    CompletionResponse::Ok(Json(completion), trace_id)
}

#[cfg(test)]
mod tests;
