//! One WebSocket session: decodes client frames, talks to rooms, and owns the writer task.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use poem::web::websocket::{Message, WebSocketStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::writer::{CloseRequest, write_loop};
use crate::app::AppState;
use crate::chat::TurnOwner;
use crate::config::ms;
use crate::error::{CloseReason, ErrorCode};
use crate::protocol::{
    ClientMessage, EventBody, Member, PROTOCOL_VERSION, ServerEvent, decode_client_message, unix_ms,
};
use crate::rooms::{MAX_ROOM_CHARS, check_label};
use crate::rooms::{MemberHandle, Outbound, Prompt, Resume, Room, RoomKey};

/// How long to keep reading after our Close frame, waiting for the client's Close reply.
/// Closing the socket with unread input would send a TCP reset and the client could lose
/// the close frame (and its reason) with it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
const MAX_NAME_CHARS: usize = 64;

/// Who opened the session (authenticated at the upgrade) and its connection slot.
pub struct Caller {
    pub principal: crate::auth::Principal,
    /// Counts against `ws_connections` until the session ends.
    pub permit: crate::limits::Permit,
    /// The key it authenticated with (none in dev mode): revoking it closes the session.
    pub key: Option<[u8; 32]>,
    /// The trace context of the upgrade request: each prompt's turn is its child.
    pub trace: Option<crate::telemetry::TraceParent>,
}

struct Session {
    id: Uuid,
    caller: Caller,
    state: AppState,
    handle: MemberHandle,
    joined: Option<(Arc<Room>, Member)>,
    /// Rooms this connection opened in the last minute.
    opens: super::rate::PerMinute,
    /// With room routing, the only room this connection may join (from `?room=`).
    pinned: Option<String>,
}

/// Serves one upgraded connection until the client leaves, misbehaves, or the server drains.
pub async fn serve_session(
    socket: WebSocketStream,
    state: AppState,
    pinned: Option<String>,
    caller: Caller,
) {
    let cfg = state.config.ws.clone();
    crate::metrics::ws_connected();
    let _gauge = SessionGauge;
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Outbound>(cfg.outbound_queue);
    let (close_tx, close_rx) = oneshot::channel();
    let slow = CancellationToken::new();
    let mut writer = tokio::spawn(write_loop(sink, rx, close_rx, slow.clone(), cfg.clone()));

    let opens = super::rate::PerMinute::new(state.config.rooms.opens_per_connection_per_min);
    let mut session = Session {
        id: Uuid::new_v4(),
        caller,
        state,
        handle: MemberHandle { tx, slow },
        joined: None,
        opens,
        pinned,
    };
    session.send_event(
        None,
        EventBody::Welcome {
            session_id: session.id,
            protocol_version: PROTOCOL_VERSION,
            heartbeat_ms: cfg.heartbeat_ms,
            max_frame_bytes: cfg.max_frame_bytes,
            max_prompt_chars: cfg.max_prompt_chars,
        },
    );
    let exit = session.read_loop(&mut stream, &mut writer).await;
    session.leave_room();
    drop(session);
    match exit {
        Exit::WriterDone => return,
        Exit::Gone => drop(close_tx),
        Exit::Close(request) => {
            if let Some(req) = request {
                let _ = close_tx.send(req);
            }
            linger(&mut stream).await;
        }
    }
    let _ = writer.await;
}

/// After our Close frame, reads until the client's Close reply (or the linger runs out).
async fn linger(stream: &mut SplitStream<WebSocketStream>) {
    let wait = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                // The read side is unusable (e.g. a frame over the hard limit is still
                // unread): keep the socket open for the rest of the linger so the client
                // can read our close frame before the reset.
                Some(Err(_)) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = timeout(CLOSE_LINGER, wait).await;
}

/// Decrements the open-sessions gauge however the session ends.
struct SessionGauge;

impl Drop for SessionGauge {
    fn drop(&mut self) {
        crate::metrics::ws_disconnected();
    }
}

/// How the read loop ended.
enum Exit {
    /// The writer already stopped (socket write failed): nothing left to close or await.
    WriterDone,
    /// The client closed or the connection broke: nothing more to say.
    Gone,
    /// We close: with this request, or (slow consumer) with the writer's own close frame.
    Close(Option<CloseRequest>),
}

/// tungstenite reports oversize frames as `Error::Capacity`; poem flattens it into
/// `io::Error::other(err.to_string())`, so only the message identifies it. The integration
/// test `bad_input_gets_clear_errors_and_the_server_stays_up` pins this.
fn is_capacity_error(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::Other && e.to_string().starts_with("Space limit exceeded")
}

impl Session {
    /// Reads frames until the client leaves, misbehaves, goes idle, is too slow, or the
    /// server drains.
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocketStream>,
        writer: &mut JoinHandle<()>,
    ) -> Exit {
        let cfg = self.state.config.ws.clone();
        let idle = ms(cfg.idle_timeout_ms);
        let (slow, closing) = (
            self.handle.slow.clone(),
            self.state.life.sessions_close.clone(),
        );
        let mut revocations = self.state.auth.revocations();
        let mut watch_key = self.caller.key.is_some();
        loop {
            tokio::select! {
                biased;
                // The writer closes with 4008 and the seq to resume from.
                _ = slow.cancelled() => return Exit::Close(None),
                _ = &mut *writer => return Exit::WriterDone,
                changed = revocations.changed(), if watch_key => match changed {
                    Ok(()) if !self.key_holds() => return Exit::Close(Some(CloseRequest {
                        reason: CloseReason::KeyRevoked,
                        detail: "the API key of this session was revoked".into(),
                    })),
                    Ok(()) => {}
                    Err(_) => watch_key = false,
                },
                _ = closing.cancelled() => return Exit::Close(Some(CloseRequest {
                    reason: CloseReason::Restart,
                    detail: format!("server restarting; reconnect_after_ms={}", self.state.config.server.reconnect_hint_ms),
                })),
                frame = timeout(idle, stream.next()) => {
                    let Ok(frame) = frame else {
                        return Exit::Close(Some(CloseRequest {
                            reason: CloseReason::IdleTimeout,
                            detail: format!("no frame for {} ms", cfg.idle_timeout_ms),
                        }));
                    };
                    if let Some(exit) = self.on_frame(frame, cfg.max_frame_bytes).await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Whether the session's key still belongs to its principal.
    fn key_holds(&self) -> bool {
        self.caller
            .key
            .is_none_or(|k| self.state.auth.holds(&k, &self.caller.principal))
    }

    /// Handles what the socket gave; `Some` when the session ends.
    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, std::io::Error>>,
        max_frame_bytes: usize,
    ) -> Option<Exit> {
        match frame {
            None | Some(Ok(Message::Close(_))) => Some(Exit::Gone),
            Some(Err(e)) if is_capacity_error(&e) => Some(Exit::Close(Some(CloseRequest {
                reason: CloseReason::FrameTooLarge,
                detail: format!("frame far exceeds {max_frame_bytes} bytes"),
            }))),
            Some(Err(e)) => {
                tracing::debug!(session = %self.id, error = %e, "websocket read failed");
                Some(Exit::Gone)
            }
            Some(Ok(Message::Text(text))) if text.len() > max_frame_bytes => {
                let message = format!(
                    "frame of {} bytes exceeds the limit of {max_frame_bytes} bytes; it was discarded",
                    text.len()
                );
                self.send_error(None, ErrorCode::FrameTooLarge, message);
                None
            }
            // Boxed: a client frame's handling may wait on the cluster store, and an inline
            // future would make every idle session's task that much larger.
            Some(Ok(Message::Text(text))) => Box::pin(self.handle_text(&text))
                .await
                .map(|c| Exit::Close(Some(c))),
            Some(Ok(Message::Binary(_))) => {
                self.send_error(
                    None,
                    ErrorCode::BinaryNotSupported,
                    "protocol v1 uses JSON text frames only".into(),
                );
                None
            }
            Some(Ok(_)) => None, // ping/pong: answered by the socket layer, counts as activity
        }
    }

    /// Handles one frame; `Some` when the session must close.
    async fn handle_text(&mut self, text: &str) -> Option<CloseRequest> {
        let msg = match decode_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.send_error(None, e.code, e.message);
                return None;
            }
        };
        match msg {
            ClientMessage::Join {
                room,
                name,
                last_seq,
                epoch,
            } => {
                let resume = last_seq.map(|last_seq| Resume { last_seq, epoch });
                return self.join(room, name, resume).await;
            }
            ClientMessage::Prompt {
                text,
                client_msg_id,
                quality,
                cache,
            } => {
                self.prompt(text, client_msg_id, quality, cache.unwrap_or(true))
                    .await
            }
            ClientMessage::Cancel { turn_id } => {
                let Some((room, _)) = &self.joined else {
                    self.not_in_room();
                    return None;
                };
                if let Err(code) = room.cancel(turn_id).await {
                    self.send_error(
                        Some(turn_id),
                        code,
                        format!("no running or queued turn {turn_id}"),
                    );
                }
            }
            ClientMessage::Typing { active } => {
                if let Some((room, _)) = &self.joined {
                    room.typing(self.id, active);
                }
            }
            ClientMessage::Ping { nonce } => self.send_event(None, EventBody::Pong { nonce }),
            ClientMessage::Leave {} => self.leave_room(),
        }
        None
    }

    async fn join(
        &mut self,
        room: String,
        name: String,
        resume: Option<Resume>,
    ) -> Option<CloseRequest> {
        let room = room.trim().to_string();
        let name = name.trim().to_string();
        if let Some(problem) = check_label("room", &room, MAX_ROOM_CHARS)
            .or_else(|| check_label("name", &name, MAX_NAME_CHARS))
        {
            self.send_error(None, ErrorCode::InvalidMessage, problem);
            return None;
        }
        if let Some(pinned) = self.pinned.as_deref().filter(|p| *p != room) {
            return Some(CloseRequest {
                reason: CloseReason::WrongRoom,
                detail: format!(
                    "this connection serves room {pinned:?}; reconnect to /v1/ws?room={room}"
                ),
            });
        }
        if let Err((message, retry_after)) = self.may_join().await {
            crate::metrics::ws_error(ErrorCode::RateLimited.as_str());
            let error = EventBody::error(ErrorCode::RateLimited, message, retry_after);
            self.send_event(None, error);
            return None;
        }
        self.leave_room();
        let key = RoomKey {
            tenant: self.caller.principal.tenant.to_string(),
            name: room.clone(),
        };
        let member = Member {
            session_id: self.id,
            name,
        };
        match self
            .state
            .rooms
            .join(key, &member, &self.handle, resume.as_ref())
            .await
        {
            Ok(room_ref) => self.joined = Some((room_ref, member)),
            Err(code) => self.send_error(None, code, format!("cannot join room {room:?}")),
        }
        None
    }

    /// A join is a request (`requests_per_min`), and one connection may open only
    /// `rooms.opens_per_connection_per_min` rooms a minute.
    async fn may_join(&mut self) -> Result<(), (String, Option<Duration>)> {
        if let Err(wait) = self.opens.take(std::time::Instant::now()) {
            let max = self.state.config.rooms.opens_per_connection_per_min;
            let message = format!(
                "this connection joined {max} rooms in the last minute \
                 (rooms.opens_per_connection_per_min)"
            );
            return Err((message, Some(wait)));
        }
        let limits = &self.state.limits;
        limits
            .request(&self.caller.principal)
            .await
            .map_err(|e| (e.to_string(), e.retry_after))
    }

    async fn prompt(
        &mut self,
        text: String,
        client_msg_id: Option<String>,
        quality: Option<crate::config::Quality>,
        use_cache: bool,
    ) {
        let Some((room, member)) = &self.joined else {
            return self.not_in_room();
        };
        let limit = self.state.config.ws.max_prompt_chars;
        let chars = text.chars().count();
        if chars > limit {
            return self.send_error(
                None,
                ErrorCode::PromptTooLong,
                format!("prompt has {chars} characters; the limit is {limit}"),
            );
        }
        if text.trim().is_empty() {
            return self.send_error(
                None,
                ErrorCode::InvalidMessage,
                "prompt text is empty".into(),
            );
        }
        if self.state.life.is_draining() {
            return self.send_error(
                None,
                ErrorCode::ShuttingDown,
                "server is shutting down; reconnect and send again".into(),
            );
        }
        let limits = &self.state.limits;
        let principal = &self.caller.principal;
        let permit = match limits.request(principal).await {
            Ok(()) => limits.turn(principal).await,
            Err(e) => Err(e),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                let code = ErrorCode::from(&e);
                crate::metrics::ws_error(code.as_str());
                let error = EventBody::error(code, e.to_string(), e.retry_after);
                return self.send_event(None, error);
            }
        };
        let prompt = Prompt {
            from: member.clone(),
            text,
            client_msg_id: client_msg_id.clone(),
            quality,
            use_cache,
            trace: self.caller.trace.clone(),
        };
        let owner = TurnOwner {
            principal: principal.clone(),
            permit: Some(Arc::new(permit)),
        };
        match room.submit_prompt(prompt, owner).await {
            Ok(_) => {}
            Err(ErrorCode::DuplicatePrompt) => self.send_error(
                None,
                ErrorCode::DuplicatePrompt,
                format!(
                    "client_msg_id {:?} was already accepted in this room",
                    client_msg_id.unwrap_or_default()
                ),
            ),
            Err(code) => self.send_error(
                None,
                code,
                format!("prompt not accepted: {}", code.as_str()),
            ),
        }
    }

    fn not_in_room(&self) {
        self.send_error(
            None,
            ErrorCode::NotInRoom,
            "send a join message first".into(),
        );
    }

    fn leave_room(&mut self) {
        if let Some((room, _)) = self.joined.take() {
            room.leave(self.id);
        }
    }

    fn send_error(&self, turn_id: Option<Uuid>, code: ErrorCode, message: String) {
        crate::metrics::ws_error(code.as_str());
        self.send_event(turn_id, EventBody::error(code, message, None));
    }

    /// Session-scoped events carry no seq; a client that cannot take them is a slow consumer.
    fn send_event(&self, turn_id: Option<Uuid>, body: EventBody) {
        let ev = ServerEvent {
            room: self.joined.as_ref().map(|(r, _)| r.key.name.clone()),
            seq: None,
            ts: unix_ms(),
            turn_id,
            body,
        };
        if self
            .handle
            .tx
            .try_send(Outbound {
                seq: None,
                kind: ev.body.kind(),
                text: ev.encode(),
            })
            .is_err()
        {
            self.handle.slow.cancel();
        }
    }
}
