//! A scripted streaming server speaking OpenAI's `/v1/chat/completions` and Anthropic's
//! `/v1/messages`.
//!
//! Each request takes the next [`Behavior`] from the script queue, or the default one when the
//! queue is empty. The server records every request body and counts streams that the client
//! abandoned before the end (how a cancelled turn shows up upstream).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use poem::http::StatusCode;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{Data, Json};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Body, EndpointExt, Response, Route, Server, handler, post};

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Streams `tokens` after `ttft`, `gap` apart, then `finish_reason` "stop", usage, `[DONE]`.
    Reply {
        tokens: Vec<String>,
        ttft: Duration,
        gap: Duration,
    },
    /// Like `Reply` with `count` tokens whose text is the send time in µs since the epoch
    /// followed by a space, so a client can measure delivery latency.
    Stamped {
        count: usize,
        ttft: Duration,
        gap: Duration,
    },
    /// Answers with this HTTP status (and `Retry-After` seconds when set).
    Status { code: u16, retry_after: Option<u64> },
    /// Sends the 200 headers, then nothing, ever.
    Hang,
    /// Streams `tokens` then closes the connection without finishing.
    Cut { tokens: Vec<String>, gap: Duration },
    /// Streams `tokens` then a chunk that is not JSON.
    Malformed { tokens: Vec<String> },
}

impl Behavior {
    /// A reply of `n` tokens "t0 ", "t1 ", … `gap` apart.
    pub fn tokens(n: usize, gap: Duration) -> Self {
        Behavior::Reply {
            tokens: (0..n).map(|i| format!("t{i} ")).collect(),
            ttft: Duration::ZERO,
            gap,
        }
    }

    /// A reply with the given text pieces and no delay.
    pub fn text(pieces: &[&str]) -> Self {
        Behavior::Reply {
            tokens: pieces.iter().map(|s| s.to_string()).collect(),
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct MockState {
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    requests: Mutex<Vec<serde_json::Value>>,
    completed: AtomicUsize,
    aborted: AtomicUsize,
    seq: AtomicU64,
}

/// A running mock; the server stops when the tokio runtime does.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
}

impl MockUpstream {
    /// Starts on `127.0.0.1:port` (0 = any free port).
    pub async fn start(port: u16, default: Behavior) -> std::io::Result<Self> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let addr = listener.local_addr()?;
        let acceptor = NoDelay(TcpAcceptor::from_tokio(listener)?);
        let state = Arc::new(MockState {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            requests: Mutex::new(Vec::new()),
            completed: AtomicUsize::new(0),
            aborted: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
        });
        let app = Route::new()
            .at("/v1/models", poem::get(models))
            .at("/v1/chat/completions", post(completions))
            .at("/v1/messages", post(messages))
            .at("/mock/requests", poem::get(received))
            .data(state.clone());
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Ok(Self { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure in confab (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a behaviour for the next request.
    pub fn push(&self, b: Behavior) {
        lock(&self.state.script).push_back(b);
    }

    /// Replaces the behaviour used when the script is empty.
    pub fn set_default(&self, b: Behavior) {
        *lock(&self.state.default) = b;
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        lock(&self.state.requests).clone()
    }

    /// Streams that ran to `[DONE]`.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Streams the client dropped before they finished.
    pub fn aborted(&self) -> usize {
        self.state.aborted.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which wire format the answer is streamed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Anthropic,
}

/// The model list real OpenAI-compatible servers answer (confab probes it for health).
#[handler]
fn models() -> poem::web::Json<serde_json::Value> {
    poem::web::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
    }))
}

/// Every request body received so far, for tests that run the mock as a process.
#[handler]
async fn received(Data(state): Data<&Arc<MockState>>) -> Json<Vec<serde_json::Value>> {
    Json(lock(&state.requests).clone())
}

#[handler]
async fn completions(
    Json(body): Json<serde_json::Value>,
    Data(state): Data<&Arc<MockState>>,
) -> Response {
    respond(body, state, Dialect::OpenAi)
}

#[handler]
async fn messages(
    Json(body): Json<serde_json::Value>,
    Data(state): Data<&Arc<MockState>>,
) -> Response {
    respond(body, state, Dialect::Anthropic)
}

fn respond(body: serde_json::Value, state: &Arc<MockState>, dialect: Dialect) -> Response {
    lock(&state.requests).push(body);
    let behavior = lock(&state.script)
        .pop_front()
        .unwrap_or_else(|| lock(&state.default).clone());
    let id = state.seq.fetch_add(1, Ordering::Relaxed);
    let plan = match behavior {
        Behavior::Status { code, retry_after } => {
            let mut resp = Response::builder()
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .content_type("application/json");
            if let Some(s) = retry_after {
                resp = resp.header("retry-after", s.to_string());
            }
            return resp.body(format!(
                r#"{{"error":{{"message":"scripted status {code}","type":"mock"}}}}"#
            ));
        }
        Behavior::Reply { tokens, ttft, gap } => Plan::new(tokens, ttft, gap, End::Finish),
        Behavior::Stamped { count, ttft, gap } => {
            Plan::new(vec![String::new(); count], ttft, gap, End::Finish).stamped()
        }
        Behavior::Hang => Plan::new(Vec::new(), Duration::ZERO, Duration::ZERO, End::Hang),
        Behavior::Cut { tokens, gap } => Plan::new(tokens, Duration::ZERO, gap, End::Cut),
        Behavior::Malformed { tokens } => {
            Plan::new(tokens, Duration::ZERO, Duration::ZERO, End::Malformed)
        }
    }
    .dialect(dialect);
    let guard = StreamGuard {
        state: state.clone(),
        finished: false,
    };
    let body = stream::unfold(
        (plan, guard, id, 0usize),
        |(mut plan, mut guard, id, i)| async move {
            let chunk = plan.next_chunk(id, i).await?;
            if plan.done {
                guard.finished = true;
            }
            Some((Ok::<Bytes, std::io::Error>(chunk), (plan, guard, id, i + 1)))
        },
    );
    Response::builder()
        .content_type("text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_bytes_stream(body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finish,
    Hang,
    Cut,
    Malformed,
}

struct Plan {
    tokens: VecDeque<String>,
    ttft: Duration,
    gap: Duration,
    end: End,
    stamped: bool,
    dialect: Dialect,
    sent_any: bool,
    tail: VecDeque<String>,
    ended: bool,
    done: bool,
}

impl Plan {
    fn new(tokens: Vec<String>, ttft: Duration, gap: Duration, end: End) -> Self {
        Self {
            tokens: tokens.into(),
            ttft,
            gap,
            end,
            stamped: false,
            dialect: Dialect::OpenAi,
            sent_any: false,
            tail: VecDeque::new(),
            ended: false,
            done: false,
        }
    }

    fn stamped(mut self) -> Self {
        self.stamped = true;
        self
    }

    fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The next SSE bytes, or `None` to close the connection.
    async fn next_chunk(&mut self, id: u64, i: usize) -> Option<Bytes> {
        if let Some(t) = self.tail.pop_front() {
            if self.tail.is_empty() && self.end == End::Finish {
                self.done = true;
            }
            return Some(Bytes::from(t));
        }
        if self.ended {
            return None;
        }
        let anthropic = self.dialect == Dialect::Anthropic;
        if i == 0 {
            // The opening chunk, as OpenAI/llama.cpp (role) and Anthropic (message_start) send it.
            return Some(if anthropic {
                sse(&serde_json::json!({
                    "type": "message_start",
                    "message": {"id": format!("mock-{id}"), "usage": {"input_tokens": 10, "output_tokens": 1}}
                }))
            } else {
                sse(&serde_json::json!({
                    "id": format!("mock-{id}"), "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}]
                }))
            });
        }
        if let Some(tok) = self.tokens.pop_front() {
            let wait = if self.sent_any { self.gap } else { self.ttft };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            self.sent_any = true;
            let text = if self.stamped {
                let us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                format!("{us} ")
            } else {
                tok
            };
            return Some(if anthropic {
                sse(&serde_json::json!({
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}
                }))
            } else {
                sse(&serde_json::json!({
                    "id": format!("mock-{id}"), "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
                }))
            });
        }
        self.ended = true;
        match self.end {
            End::Finish => {
                let n = i.saturating_sub(1);
                let tail: Vec<Bytes> = if anthropic {
                    vec![
                        sse(&serde_json::json!({
                            "type": "message_delta", "delta": {"stop_reason": "end_turn"},
                            "usage": {"output_tokens": n}
                        })),
                        sse(&serde_json::json!({"type": "message_stop"})),
                    ]
                } else {
                    vec![
                        sse(&serde_json::json!({
                            "id": format!("mock-{id}"), "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
                        })),
                        sse(&serde_json::json!({
                            "id": format!("mock-{id}"), "object": "chat.completion.chunk", "choices": [],
                            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
                        })),
                        Bytes::from_static(b"data: [DONE]\n\n"),
                    ]
                };
                self.tail = tail
                    .into_iter()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect();
                let first = self.tail.pop_front()?;
                Some(Bytes::from(first))
            }
            End::Hang => {
                std::future::pending::<()>().await;
                None
            }
            End::Cut => None,
            End::Malformed => Some(Bytes::from_static(b"data: {\"choices\": [oops\n\n")),
        }
    }
}

fn sse(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Counts a stream as aborted when the body is dropped before it finished.
struct StreamGuard {
    state: Arc<MockState>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// poem's acceptor leaves Nagle on; token chunks must leave at once or the mock itself adds
/// delayed-ACK stalls to every latency measured through it.
struct NoDelay(TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let accepted = self.0.accept().await?;
        let _ = accepted.0.set_nodelay(true);
        Ok(accepted)
    }
}
