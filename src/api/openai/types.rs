//! The OpenAI wire types: request, whole and streamed responses, errors, models; and the
//! one mapping from confab's error codes to OpenAI's error shape.

use futures_util::stream::BoxStream;
use poem::http::StatusCode;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::Any;
use poem_openapi::{ApiResponse, Object, Union};

use crate::api::strict::Str;
use crate::error::ErrorCode;

/// One message of the conversation.
#[derive(Debug, Clone, Object)]
pub struct ChatMessageIn {
    /// system, developer, user, assistant or tool.
    pub role: Str,
    /// Text, or text parts; null (or absent) on an assistant message that only calls tools.
    #[oai(nullable)]
    pub content: Option<MessageContent>,
    /// The calls an assistant message made.
    #[oai(nullable)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a tool message answers.
    #[oai(nullable)]
    pub tool_call_id: Option<Str>,
    /// The participant's name (accepted, not used).
    #[oai(nullable)]
    pub name: Option<Str>,
}

/// A message's content: a string, or an array of text parts (other part types are refused).
#[derive(Debug, Clone, Union)]
pub enum MessageContent {
    Text(Str),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Object)]
pub struct ContentPart {
    /// Only `text`.
    #[oai(rename = "type")]
    pub kind: Str,
    #[oai(nullable)]
    pub text: Option<Str>,
}

/// A call in an assistant message of the conversation.
#[derive(Debug, Clone, Object)]
pub struct ToolCallIn {
    pub id: Str,
    /// Only `function`.
    #[oai(rename = "type", validator(pattern = "^function$"))]
    pub kind: Str,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Object)]
pub struct FunctionCallIn {
    pub name: Str,
    /// The arguments as a JSON string.
    pub arguments: Str,
}

/// A function the model may call (`{"type": "function", "function": {...}}`).
#[derive(Debug, Clone, Object)]
pub struct ToolIn {
    /// Only `function`.
    #[oai(rename = "type", validator(pattern = "^function$"))]
    pub kind: Str,
    pub function: FunctionDefIn,
}

#[derive(Debug, Clone, Object)]
pub struct FunctionDefIn {
    /// 1–64 letters, digits, `_` or `-`.
    #[oai(validator(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    #[oai(nullable)]
    pub description: Option<Str>,
    /// The JSON Schema of the arguments object.
    #[oai(nullable)]
    pub parameters: Option<Any<serde_json::Value>>,
    /// Accepted; forwarded as part of the schema's contract, not enforced by confab.
    #[oai(nullable)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, Union)]
pub enum ToolChoiceIn {
    Mode(Str),
    Function(NamedToolChoice),
}

#[derive(Debug, Clone, Object)]
pub struct NamedToolChoice {
    /// Only `function`.
    #[oai(rename = "type", validator(pattern = "^function$"))]
    pub kind: Str,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Object)]
pub struct NamedFunction {
    pub name: Str,
}

#[derive(Debug, Clone, Object)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`).
    #[oai(nullable)]
    pub include_usage: Option<bool>,
}

/// `stop`: one sequence or up to four.
#[derive(Debug, Clone, Union)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

/// `response_format`: `{"type": "text"}`, `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name": …, "schema": {…}, "strict": …}}`.
#[derive(Debug, Clone, Object)]
pub struct ResponseFormat {
    #[oai(
        rename = "type",
        validator(pattern = "^(text|json_object|json_schema)$")
    )]
    pub kind: String,
    #[oai(nullable)]
    pub json_schema: Option<Any<serde_json::Value>>,
}

/// The OpenAI request. The sampling settings are sent to the chain's upstreams (translated
/// for Anthropic); a setting one of the chain's links cannot honour is refused with 400,
/// never dropped. Fields confab does not know are ignored.
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
    /// 0–2 (Anthropic links: 0–1).
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "2")))]
    pub temperature: Option<f64>,
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1")))]
    pub top_p: Option<f64>,
    /// Output cap; the provider's configured `max_tokens` still bounds it.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens`; both given: the smaller.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub max_completion_tokens: Option<u32>,
    #[oai(nullable)]
    pub stop: Option<StopSequences>,
    #[oai(nullable)]
    pub seed: Option<i64>,
    #[oai(nullable, validator(minimum(value = "-2"), maximum(value = "2")))]
    pub presence_penalty: Option<f64>,
    #[oai(nullable, validator(minimum(value = "-2"), maximum(value = "2")))]
    pub frequency_penalty: Option<f64>,
    #[oai(nullable)]
    pub response_format: Option<ResponseFormat>,
    /// Choices to generate: only 1.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1")))]
    pub n: Option<u32>,
    /// Functions the model may call; the client runs them and sends the results back as
    /// `tool` messages. At most 128.
    #[oai(nullable, validator(max_items = 128))]
    pub tools: Option<Vec<ToolIn>>,
    #[oai(nullable)]
    pub tool_choice: Option<ToolChoiceIn>,
    /// False: at most one call per answer.
    #[oai(nullable)]
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone, Object)]
pub struct ChatMessageOut {
    pub role: String,
    /// Null when the answer is only tool calls.
    pub content: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// A call the model made, for the client to run.
#[derive(Debug, Clone, Object)]
pub struct ToolCallOut {
    pub id: String,
    /// Always `function`.
    #[oai(rename = "type")]
    pub kind: String,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Object)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments as a JSON string (as the model wrote them).
    pub arguments: String,
}

#[derive(Debug, Clone, Object)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessageOut,
    /// stop, length or tool_calls.
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
    /// The server-side tool calls the model made (RAG alias), as they ended.
    pub tools: Vec<ToolTrace>,
}

/// A server-side tool call, as the room's `tool` event tells it.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ToolTrace {
    pub call_id: String,
    pub name: String,
    pub server: Option<String>,
    /// running, ok, error, timeout or refused.
    pub status: String,
    pub input: Any<serde_json::Value>,
    pub output: Any<serde_json::Value>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub cost_usd: f64,
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
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

/// A piece of a streamed call: the first piece of call `index` has its id, type and name,
/// later ones more of its arguments.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ToolCallChunk {
    pub index: u32,
    pub id: Option<String>,
    #[oai(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionChunk,
}

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct FunctionChunk {
    pub name: Option<String>,
    pub arguments: Option<String>,
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
    /// A server-side tool call starting (`running`) or ending, as it happens.
    pub confab_tool: Option<ToolTrace>,
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
pub type ChunkStream = BoxStream<'static, Option<ChatCompletionChunk>>;

#[derive(ApiResponse)]
pub enum CompletionResponse {
    /// The whole answer (`stream` false or absent).
    #[oai(status = 200)]
    Ok(
        Json<ChatCompletion>,
        /// The turn's trace id, when traces are exported (find the trace of a report).
        #[oai(header = "x-confab-trace-id")]
        Option<String>,
    ),
    /// Server-sent events: chunks, then `data: [DONE]` (`stream: true`).
    #[oai(status = 200)]
    Stream(
        EventStream<ChunkStream>,
        #[oai(header = "x-confab-trace-id")] Option<String>,
    ),
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

pub(in crate::api) fn body(
    code: ErrorCode,
    message: String,
    param: Option<&str>,
) -> OpenAiErrorBody {
    OpenAiErrorBody {
        message,
        kind: error_kind(code.http_status()).into(),
        code: code.as_str().into(),
        param: param.map(str::to_string),
    }
}

pub(super) fn fail(
    code: ErrorCode,
    message: impl Into<String>,
    param: Option<&str>,
) -> CompletionResponse {
    fail_retry(code, message, param, None)
}

/// An error in OpenAI's shape with a `Retry-After` of `retry` seconds.
pub(super) fn fail_retry(
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
