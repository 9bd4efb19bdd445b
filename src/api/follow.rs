//! Follow a room over server-sent events: read-only viewers and proxies that dislike
//! WebSockets get the same room events as members (`id:` = seq, `event:` = type), and
//! `Last-Event-ID` (or `?last_seq=`) with `?epoch=` (the room log's epoch, from the first
//! `resync`) resumes where they left off; without the epoch, or with another one, the
//! stream starts with a `resync`.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::http::StatusCode;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use tokio_util::sync::CancellationToken;

use super::auth::ApiAuth;
use super::rest::{ApiError, fails, failure};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::rooms::{MAX_ROOM_CHARS, MemberHandle, Outbound, Resume, RoomKey, check_label};

type Frames = BoxStream<'static, RoomFrame>;

/// One SSE event: `id:` is `seq`, `event:` is `kind`, and `data:` is `data`, the room event
/// exactly as the WebSocket sends it (`schemas/server-event.schema.json`).
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct RoomFrame {
    pub seq: Option<u64>,
    pub kind: String,
    pub data: String,
}

#[derive(ApiResponse)]
pub enum FollowResponse {
    /// `text/event-stream`: each event is `id: <seq>`, `event: <type>`, `data: <ServerEvent JSON>`.
    #[oai(status = 200)]
    Stream(EventStream<Frames>),
    /// Bad room name or Last-Event-ID.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The server is shutting down.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
    /// Missing or invalid API key.
    #[oai(status = 401)]
    Unauthorized(Json<ApiError>),
    /// A tenant or user limit was reached, or the room is full or the server holds too many
    /// rooms; retry after `Retry-After` seconds when it is set.
    #[oai(status = 429)]
    RateLimited(Json<ApiError>, #[oai(header = "Retry-After")] Option<u64>),
    /// Another failure: the status and `code` say which.
    Other(StatusCode, Json<ApiError>),
}

fails!(FollowResponse {
    400 => BadRequest,
    401 => Unauthorized,
    503 => Unavailable,
});

/// The room-following route.
pub struct FollowApi {
    pub state: AppState,
}

#[OpenApi]
impl FollowApi {
    /// Follow a room's events (read-only) as server-sent events.
    #[oai(path = "/v1/rooms/:room/events", method = "get")]
    async fn follow(
        &self,
        _auth: ApiAuth,
        principal: Data<&Principal>,
        room: Path<String>,
        /// The last seq received; the stream resumes after it.
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        /// Same as Last-Event-ID, for clients that cannot set headers.
        last_seq: Query<Option<u64>>,
        /// The room log's epoch that `Last-Event-ID` / `last_seq` belongs to.
        epoch: Query<Option<String>>,
    ) -> FollowResponse {
        let state = &self.state;
        let name = room.0.trim().to_string();
        if let Some(problem) = check_label("room", &name, MAX_ROOM_CHARS) {
            return failure(ErrorCode::InvalidMessage, problem);
        }
        let resume = match resume_point(last_event_id.0.as_deref(), last_seq.0) {
            Ok(last) => last.map(|last_seq| Resume {
                last_seq,
                epoch: epoch.0,
            }),
            Err(resp) => return resp,
        };
        if state.life.is_draining() {
            return failure(ErrorCode::ShuttingDown, "server is shutting down");
        }
        // A follower holds a connection slot (`ws_connections`) like a WebSocket session.
        let permit = match state.limits.connect(principal.0).await {
            Ok(p) => p,
            Err(e) => {
                let body = ApiError::new(ErrorCode::RateLimited, e.to_string());
                return FollowResponse::RateLimited(body, e.retry_after_secs());
            }
        };
        let key = RoomKey {
            tenant: principal.0.tenant.to_string(),
            name,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Outbound>(state.config.ws.outbound_queue);
        let slow = CancellationToken::new();
        let handle = MemberHandle {
            tx,
            slow: slow.clone(),
        };
        if let Err(code) = state.rooms.watch(key, &handle, resume.as_ref()).await {
            return failure(code, "cannot follow the room");
        }
        let frames = frames(rx, (slow, state.life.sessions_close.clone()), permit);
        FollowResponse::Stream(
            EventStream::new(frames)
                .keep_alive(Duration::from_secs(15))
                .to_event(|f: RoomFrame| {
                    let ev = Event::message(f.data).event_type(f.kind);
                    match f.seq {
                        Some(seq) => ev.id(seq.to_string()),
                        None => ev,
                    }
                }),
        )
    }
}

/// Where to resume: `Last-Event-ID` (a seq), else `?last_seq=`.
fn resume_point(
    last_event_id: Option<&str>,
    last_seq: Option<u64>,
) -> Result<Option<u64>, FollowResponse> {
    match last_event_id.map(str::trim) {
        Some(id) if !id.is_empty() => id.parse::<u64>().map(Some).map_err(|_| {
            failure(
                ErrorCode::InvalidMessage,
                format!("Last-Event-ID {id:?} is not a seq number"),
            )
        }),
        _ => Ok(last_seq),
    }
}

/// The viewer's frames, until it falls behind (reconnect with Last-Event-ID) or the server
/// drains; dropping the stream unregisters the viewer at the next event.
/// The stream holds the follower's connection `permit` until it ends.
fn frames(
    rx: tokio::sync::mpsc::Receiver<Outbound>,
    (slow, closing): (CancellationToken, CancellationToken),
    permit: crate::limits::Permit,
) -> Frames {
    let state = (rx, slow, closing, permit);
    futures_util::stream::unfold(state, |(mut rx, slow, closing, permit)| async move {
        tokio::select! {
            biased;
            _ = slow.cancelled() => None,
            _ = closing.cancelled() => None,
            frame = rx.recv() => frame.map(|f| (f, (rx, slow, closing, permit))),
        }
    })
    .map(|f: Outbound| RoomFrame {
        seq: f.seq,
        kind: f.kind.to_string(),
        data: f.text.to_string(),
    })
    .boxed()
}
