//! The one place that maps every failure to what the outside sees: the wire error code, whether
//! a retry can help, the WebSocket close code, the HTTP status and the metric label.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Machine-readable error codes carried by the `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    BadJson,
    /// The `type` field is missing or names no known message.
    UnknownType,
    /// A known message with missing or ill-typed fields.
    InvalidMessage,
    /// A binary frame; protocol v1 is JSON text only.
    BinaryNotSupported,
    /// A frame larger than `ws.max_frame_bytes`; it was discarded.
    FrameTooLarge,
    /// The prompt exceeds `ws.max_prompt_chars`.
    PromptTooLong,
    /// A room-scoped message before `join`.
    NotInRoom,
    /// Too many turns already queued in the room.
    RoomBusy,
    /// The room has reached `rooms.max_members`.
    RoomFull,
    /// The server holds `rooms.max_rooms` rooms already, or the tenant
    /// `rooms.max_rooms_per_tenant`.
    TooManyRooms,
    /// The same `client_msg_id` was already accepted in this room.
    DuplicatePrompt,
    /// `cancel` named a turn that is not running or queued.
    UnknownTurn,
    /// The upstream model could not be reached.
    UpstreamUnavailable,
    /// The upstream answered with an error status.
    UpstreamError,
    /// The upstream rate-limited the request.
    UpstreamRateLimited,
    /// The upstream was too slow (first token, between tokens, or overall).
    UpstreamTimeout,
    /// The upstream sent something that is not a valid stream.
    UpstreamProtocol,
    /// The upstream stream ended before it finished.
    UpstreamCut,
    /// A queue (e.g. embedding) is full; try again shortly.
    Overloaded,
    /// Retrieval (embedding model or vector store) failed or is disabled.
    RetrievalUnavailable,
    /// Cluster mode: the shared store (Redis) cannot be reached; the node keeps sessions
    /// open and recovers by itself when it returns.
    ClusterUnavailable,
    /// Cluster mode: the node running the turn stopped (killed, partitioned); another node
    /// ended the turn. The prompt may be sent again.
    NodeLost,
    /// An upload over `ingest.max_upload_bytes`.
    DocumentTooLarge,
    /// An upload that is not PDF, HTML, Markdown or UTF-8 text (judged by its bytes).
    UnsupportedDocument,
    /// A document of a supported type that cannot be read (corrupt or encrypted PDF, no text).
    DocumentUnreadable,
    /// No such document for this tenant.
    NotFound,
    /// The server is draining for shutdown.
    ShuttingDown,
    /// No API key, or one that is not valid.
    Unauthorized,
    /// A browser page from an origin not in `auth.allowed_origins`.
    Forbidden,
    /// A per-tenant or per-user limit (requests, turns, connections, tokens, USD) is
    /// reached; `retry_after_ms` says when to try again.
    RateLimited,
    /// The prompt-injection screen refused the prompt (`safety.prompts = "block"`).
    PromptRejected,
    /// The turn reached its cost ceiling (`turn.max_cost_usd`, models and tools together)
    /// after a round of tool calls, before the model answered.
    TurnBudgetSpent,
    /// A bug; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// Every code (tests walk it to check the mappings below are total and consistent).
    pub const ALL: [ErrorCode; 33] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidMessage,
        ErrorCode::BinaryNotSupported,
        ErrorCode::FrameTooLarge,
        ErrorCode::PromptTooLong,
        ErrorCode::NotInRoom,
        ErrorCode::RoomBusy,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::DuplicatePrompt,
        ErrorCode::UnknownTurn,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamRateLimited,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamProtocol,
        ErrorCode::UpstreamCut,
        ErrorCode::Overloaded,
        ErrorCode::RetrievalUnavailable,
        ErrorCode::ClusterUnavailable,
        ErrorCode::NodeLost,
        ErrorCode::DocumentTooLarge,
        ErrorCode::UnsupportedDocument,
        ErrorCode::DocumentUnreadable,
        ErrorCode::NotFound,
        ErrorCode::ShuttingDown,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::PromptRejected,
        ErrorCode::TurnBudgetSpent,
        ErrorCode::Internal,
    ];

    /// Whether the same request may succeed if sent again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RoomBusy
                | ErrorCode::TooManyRooms
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::UpstreamError
                | ErrorCode::UpstreamRateLimited
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamCut
                | ErrorCode::Overloaded
                | ErrorCode::RetrievalUnavailable
                | ErrorCode::ClusterUnavailable
                | ErrorCode::NodeLost
                | ErrorCode::ShuttingDown
                | ErrorCode::RateLimited
        )
    }

    /// The snake_case name, used as wire code and as bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::PromptTooLong => "prompt_too_long",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RoomBusy => "room_busy",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::DuplicatePrompt => "duplicate_prompt",
            ErrorCode::UnknownTurn => "unknown_turn",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamProtocol => "upstream_protocol",
            ErrorCode::UpstreamCut => "upstream_cut",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RetrievalUnavailable => "retrieval_unavailable",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::NodeLost => "node_lost",
            ErrorCode::DocumentTooLarge => "document_too_large",
            ErrorCode::UnsupportedDocument => "unsupported_document",
            ErrorCode::DocumentUnreadable => "document_unreadable",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PromptRejected => "prompt_rejected",
            ErrorCode::TurnBudgetSpent => "turn_budget_spent",
            ErrorCode::Internal => "internal",
        }
    }

    /// HTTP status for the same condition on REST routes.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadJson
            | ErrorCode::UnknownType
            | ErrorCode::InvalidMessage
            | ErrorCode::BinaryNotSupported
            | ErrorCode::NotInRoom
            | ErrorCode::UnknownTurn
            | ErrorCode::PromptRejected => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::DuplicatePrompt => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::PromptTooLong | ErrorCode::FrameTooLarge | ErrorCode::DocumentTooLarge => {
                413
            }
            ErrorCode::UnsupportedDocument => 415,
            ErrorCode::DocumentUnreadable => 422,
            ErrorCode::RoomBusy
            | ErrorCode::RoomFull
            | ErrorCode::TooManyRooms
            | ErrorCode::RateLimited
            | ErrorCode::UpstreamRateLimited => 429,
            ErrorCode::TurnBudgetSpent => 402,
            ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamError
            | ErrorCode::UpstreamProtocol
            | ErrorCode::UpstreamCut => 502,
            ErrorCode::ShuttingDown
            | ErrorCode::Overloaded
            | ErrorCode::RetrievalUnavailable
            | ErrorCode::ClusterUnavailable => 503,
            ErrorCode::NodeLost => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

/// Why the server closes a WebSocket; the numeric code is part of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A frame beyond the hard limit (4 × `ws.max_frame_bytes`) that was not even read (1009).
    FrameTooLarge,
    /// The server is restarting; reconnect after the hinted delay (1012).
    Restart,
    /// No frame from the client within `ws.idle_timeout_ms` (4001).
    IdleTimeout,
    /// The client did not keep up; resume from the seq in the reason (4008).
    SlowConsumer,
    /// The session is pinned to another room by room routing; reconnect with `?room=` of the
    /// room wanted, so the ingress sends it to the replica that serves it (4009).
    WrongRoom,
    /// The API key the session authenticated with was revoked (4003).
    KeyRevoked,
}

impl CloseReason {
    /// The close code sent on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::FrameTooLarge => 1009,
            CloseReason::Restart => 1012,
            CloseReason::IdleTimeout => 4001,
            CloseReason::SlowConsumer => 4008,
            CloseReason::WrongRoom => 4009,
            CloseReason::KeyRevoked => 4003,
        }
    }

    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::Restart => "restart",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::WrongRoom => "wrong_room",
            CloseReason::KeyRevoked => "key_revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_label() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(wire, serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn every_code_is_listed_once_with_an_error_status() {
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert!(
            ErrorCode::ALL
                .iter()
                .all(|c| (400..600).contains(&c.http_status()))
        );
        assert_eq!(ErrorCode::Internal.http_status(), 500);
    }
}
