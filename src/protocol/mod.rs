//! Protocol v1: the JSON messages a WebSocket client sends and the events the server sends.
//!
//! These types are the contract. `schemas/*.schema.json` are generated from them
//! (`confab schema`) and a test fails when the checked-in files drift.

mod decode;
mod tool;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Quality;
use crate::error::ErrorCode;

pub use decode::{DecodeError, decode_client_message};
pub use tool::{
    SCREEN_PROMPT, SEARCH_DOCUMENTS, ScreenFlag, ScreenInput, ScreenOutput, ScreenedChunk,
    SearchInput, SearchOutput, SourceResult, ToolError, ToolInput, ToolOutput,
};

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from client to server (one JSON text frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter a room (leaving any other). With `last_seq` and `epoch` (from the room's last
    /// `resync`), resume after a reconnect; a `last_seq` of another epoch (or none) gets a
    /// `resync`, never another epoch's events.
    Join {
        room: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Ask the assistant; everyone in the room sees the prompt and the streamed answer.
    Prompt {
        text: String,
        /// Client-chosen id; a repeat within the room is rejected as `duplicate_prompt`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// Speed/quality hint for cheap-first routing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<Quality>,
        /// `false`: neither answer from nor store in the answer cache.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache: Option<bool>,
    },
    /// Stop a running or queued turn; anyone in the room may cancel.
    Cancel { turn_id: Uuid },
    /// The user is typing (or stopped); relayed to the room, never stored.
    Typing {
        #[serde(default = "yes")]
        active: bool,
    },
    /// Application-level ping, answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    /// Leave the current room; the connection stays open.
    Leave {},
}

fn yes() -> bool {
    true
}

/// Every event the server sends. Room events carry `room` and a per-room `seq` that strictly
/// increases; session events (`welcome`, `error`, `pong`) and the ephemeral `typing` carry none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Milliseconds since the Unix epoch when the server emitted the event.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<Uuid>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl ServerEvent {
    /// Serialises the event once; every member gets the same bytes.
    pub fn encode(&self) -> std::sync::Arc<str> {
        match serde_json::to_string(self) {
            Ok(s) => std::sync::Arc::from(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise server event");
                std::sync::Arc::from(
                    "{\"type\":\"error\",\"code\":\"internal\",\"message\":\"encoding failed\",\"retryable\":false,\"ts\":0}",
                )
            }
        }
    }
}

impl ServerEvent {
    /// A room event's bytes split around its seq: `head + "\"seq\":N," + tail` is exactly
    /// what [`ServerEvent::encode`] gives with `seq: Some(N)`. Cluster mode's log script
    /// takes the seq and splices it in, so every node sends the same bytes. `None` for an
    /// event without a room or with its seq already set.
    pub fn encode_around_seq(&self) -> Option<(String, String)> {
        let room = self.room.as_ref().filter(|_| self.seq.is_none())?;
        let whole = self.encode();
        let head = format!("{{\"room\":{},", serde_json::to_string(room).ok()?);
        let tail = whole.strip_prefix(head.as_str())?.to_string();
        Some((head, tail))
    }

    /// Event kinds as the static labels metrics use, from their wire names.
    pub fn static_kind(kind: &str) -> &'static str {
        const KINDS: [&str; 12] = [
            "welcome", "presence", "typing", "message", "start", "delta", "tool", "metrics", "end",
            "error", "resync", "pong",
        ];
        KINDS
            .iter()
            .find(|k| **k == kind)
            .copied()
            .unwrap_or("other")
    }
}

/// Milliseconds since the Unix epoch: the `ts` of every event.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The typed part of a server event, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// First frame of every session.
    Welcome {
        session_id: Uuid,
        protocol_version: u32,
        heartbeat_ms: u64,
        max_frame_bytes: usize,
        max_prompt_chars: usize,
    },
    /// The room's members after someone joined or left.
    Presence { members: Vec<Member> },
    /// Someone started or stopped typing (ephemeral: no seq, not replayed).
    Typing { member: Member, active: bool },
    /// A participant's prompt, as everyone sees it.
    Message {
        from: Member,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// The assistant starts answering the turn with the first link routing chose.
    Start {
        model: String,
        chain: String,
        prompt_seq: u64,
        /// Set when the answer is replayed from the cache.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cached: Option<CacheInfo>,
    },
    /// A piece of the answer.
    Delta { text: String },
    /// A tool call made during the turn: confab's own (the search before the answer, the
    /// prompt screen) and the model's calls of server-side tools. A model's call is sent
    /// twice under one `call_id`: `running` when it starts, then how it ended.
    Tool {
        name: String,
        /// The model's id for the call; absent for confab's own steps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        /// The MCP server the tool lives on; absent for confab's built-in tools.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
        #[serde(default)]
        status: ToolStatus,
        input: ToolInput,
        /// Null while `running`; cut to `turn.tool_output_chars` and redacted like answers.
        output: ToolOutput,
        /// Why the call did not succeed (`error`, `timeout`, `refused`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        duration_ms: u64,
        /// What the call cost (counted against `turn.max_cost_usd`).
        #[serde(default)]
        cost_usd: f64,
    },
    /// Measurements of the finished turn.
    Metrics(TurnMetrics),
    /// The turn is over; exactly one per turn.
    End {
        finish_reason: FinishReason,
        /// True when the answer stopped early and the text so far is kept as partial.
        partial: bool,
    },
    /// Something went wrong; `turn_id` is set when it concerns a turn.
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Replay from `last_seq` was impossible: the room's state as of `seq`.
    Resync { snapshot: RoomSnapshot },
    /// Answer to a client `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
}

impl EventBody {
    /// An `error` event; whether it is retryable always comes from the code.
    pub fn error(
        code: ErrorCode,
        message: String,
        retry_after: Option<std::time::Duration>,
    ) -> Self {
        EventBody::Error {
            code,
            message,
            retryable: code.retryable(),
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        }
    }

    /// The `type` tag, as a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Welcome { .. } => "welcome",
            EventBody::Presence { .. } => "presence",
            EventBody::Typing { .. } => "typing",
            EventBody::Message { .. } => "message",
            EventBody::Start { .. } => "start",
            EventBody::Delta { .. } => "delta",
            EventBody::Tool { .. } => "tool",
            EventBody::Metrics(_) => "metrics",
            EventBody::End { .. } => "end",
            EventBody::Error { .. } => "error",
            EventBody::Resync { .. } => "resync",
            EventBody::Pong { .. } => "pong",
        }
    }
}

/// A participant as others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub session_id: Uuid,
    pub name: String,
}

/// Where a tool call stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// Started; its result follows in another `tool` event with the same `call_id`.
    Running,
    #[default]
    Ok,
    /// The tool failed (or its server could not be reached, or the turn was cancelled).
    Error,
    /// It ran past its `timeout_ms`.
    Timeout,
    /// Not run: not offered to this tenant, or a budget (`turn.max_tool_calls`,
    /// `turn.max_cost_usd`) was spent. The model is told.
    Refused,
}

impl ToolStatus {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolStatus::Running => "running",
            ToolStatus::Ok => "ok",
            ToolStatus::Error => "error",
            ToolStatus::Timeout => "timeout",
            ToolStatus::Refused => "refused",
        }
    }
}

impl EventBody {
    /// A `tool` event of one of confab's own steps (no call id, no server, ok, free).
    pub fn own_tool(name: &str, input: ToolInput, output: ToolOutput, duration_ms: u64) -> Self {
        EventBody::Tool {
            name: name.into(),
            call_id: None,
            server: None,
            status: ToolStatus::Ok,
            input,
            output,
            error: None,
            duration_ms,
            cost_usd: 0.0,
        }
    }
}

/// Why a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Error,
    /// The answer is calls of tools the client runs (the OpenAI endpoint's `tools`).
    ToolCalls,
}

impl FinishReason {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

impl AttemptOutcome {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::CircuitOpen => "circuit_open",
            AttemptOutcome::Empty => "empty",
            AttemptOutcome::Refused => "refused",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// Per-turn measurements sent in the `metrics` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TurnMetrics {
    /// The model that produced the answer (or was tried last).
    pub model: String,
    /// The provider (chain link) of that model.
    pub provider: String,
    pub chain: String,
    /// From the turn's start to the first delta; absent when no token arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// False when the upstream sent no usage and the counts are estimates.
    pub usage_reported: bool,
    /// USD at the provider's configured prices.
    pub cost_usd: f64,
    /// Source numbers (`[n]` of the `tool` event's results) the answer cites.
    pub citations: Vec<usize>,
    /// The model answered from a source without citing it, and confab added the citation
    /// (the last `delta`, ` [n]`) by matching the answer to the sources.
    #[serde(default)]
    pub citation_added: bool,
    /// The answer came from the cache (cost 0).
    pub cached: bool,
    /// USD the cache saved: the original turn's cost.
    pub saved_usd: f64,
    /// Every upstream attempt of the turn, in order (retries and fallbacks included).
    pub attempts: Vec<AttemptRecord>,
    /// The turn's OpenTelemetry trace id (32 hex digits), when its trace is exported: what
    /// a user report should quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Which layer answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheLayer {
    Exact,
    Semantic,
}

impl CacheLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLayer::Exact => "exact",
            CacheLayer::Semantic => "semantic",
        }
    }
}

/// How a cached answer matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CacheInfo {
    pub layer: CacheLayer,
    /// Cosine similarity of the prompts (1 for an exact hit).
    pub similarity: f32,
}

/// One upstream attempt as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptRecord {
    pub provider: String,
    pub model: String,
    pub outcome: AttemptOutcome,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    /// Upstream HTTP status, when it answered with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Streamed an answer to the end.
    Ok,
    /// Failed; the chain retried or moved on (before the first token) or the turn failed.
    Error,
    /// No first token (or no next token) in time.
    Timeout,
    /// Skipped: the provider's circuit breaker is open.
    CircuitOpen,
    /// Finished without any text; escalated.
    Empty,
    /// Began with a refusal; escalated without showing it.
    Refused,
    /// The turn was cancelled during this attempt.
    Cancelled,
}

/// The room's state for a client that cannot replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomSnapshot {
    /// The room log's epoch: a new one after a restart or when the log was lost, so seqs of
    /// an old epoch never resume into a new one. Send it back with `last_seq` in `join`.
    pub epoch: String,
    pub members: Vec<Member>,
    /// Completed turns, oldest first.
    pub turns: Vec<TurnSnapshot>,
    /// The turn being answered right now, with the text so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<TurnSnapshot>,
}

/// One prompt and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TurnSnapshot {
    pub turn_id: Uuid,
    pub from: Member,
    pub prompt: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    pub partial: bool,
}

/// The JSON Schemas of both directions, as (file name, pretty JSON).
pub fn schemas() -> Vec<(&'static str, String)> {
    let pretty = |v: schemars::Schema| {
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    };
    vec![
        (
            "client-message.schema.json",
            pretty(schemars::schema_for!(ClientMessage)),
        ),
        (
            "server-event.schema.json",
            pretty(schemars::schema_for!(ServerEvent)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_split_around_its_seq_is_the_event_with_that_seq() {
        let mut ev = ServerEvent {
            room: Some("r\"o:o\"m,\"seq\":1".into()),
            seq: None,
            ts: 17,
            turn_id: Some(Uuid::nil()),
            body: EventBody::Delta {
                text: "\"seq\":9".into(),
            },
        };
        let (head, tail) = ev.encode_around_seq().unwrap_or_default();
        ev.seq = Some(42);
        assert_eq!(format!("{head}\"seq\":42,{tail}"), &*ev.encode());
        assert!(ev.encode_around_seq().is_none(), "its seq is already set");
        assert_eq!(ServerEvent::static_kind("delta"), "delta");
        assert_eq!(ServerEvent::static_kind("nonsense"), "other");
    }
}
