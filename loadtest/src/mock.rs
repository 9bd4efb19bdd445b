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
    /// Answers with calls of these tools, `(name, arguments JSON)`: each call opens with its
    /// id and name, then its arguments in two pieces; the finish is `tool_calls`
    /// (Anthropic: `tool_use` blocks and `stop_reason: tool_use`).
    ToolCalls { calls: Vec<(String, String)> },
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

    /// A call of each `(name, arguments)`.
    pub fn calls(calls: &[(&str, &str)]) -> Self {
        Behavior::ToolCalls {
            calls: calls
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
        }
    }

    /// A behaviour from its JSON form (`POST /mock/script`): `{"text": "a b"}`,
    /// `{"tool_calls": [{"name": …, "arguments": "{…}"}]}`, `{"status": 500}`, `{"hang": true}`.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        if let Some(text) = v["text"].as_str() {
            return Some(Behavior::Reply {
                tokens: text.split_inclusive(' ').map(str::to_string).collect(),
                ttft: Duration::ZERO,
                gap: Duration::ZERO,
            });
        }
        if let Some(calls) = v["tool_calls"].as_array() {
            let calls = calls
                .iter()
                .map(|c| {
                    let name = c["name"].as_str()?.to_string();
                    Some((name, c["arguments"].as_str().unwrap_or("{}").to_string()))
                })
                .collect::<Option<Vec<_>>>()?;
            return Some(Behavior::ToolCalls { calls });
        }
        if let Some(code) = v["status"].as_u64() {
            let code = u16::try_from(code).ok()?;
            return Some(Behavior::Status {
                code,
                retry_after: None,
            });
        }
        (v["hang"] == true).then_some(Behavior::Hang)
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
    /// Each request's W3C `traceparent` header, in the order of `requests`.
    traceparents: Mutex<Vec<Option<String>>>,
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
            traceparents: Mutex::new(Vec::new()),
            completed: AtomicUsize::new(0),
            aborted: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
        });
        let app = Route::new()
            .at("/v1/models", poem::get(models))
            .at("/v1/chat/completions", post(completions))
            .at("/v1/messages", post(messages))
            .at("/mock/requests", poem::get(received))
            .at("/mock/script", post(script))
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

    /// Each request's `traceparent` header (trace context propagation), in order.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        lock(&self.state.traceparents).clone()
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

/// Queues behaviours for the next requests (a JSON array of [`Behavior::from_json`] forms).
#[handler]
async fn script(
    Json(body): Json<Vec<serde_json::Value>>,
    Data(state): Data<&Arc<MockState>>,
) -> Response {
    let parsed: Option<Vec<Behavior>> = body.iter().map(Behavior::from_json).collect();
    let Some(behaviors) = parsed else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("unknown behaviour");
    };
    let n = behaviors.len();
    lock(&state.script).extend(behaviors);
    Response::builder().body(format!("{n} queued"))
}

#[handler]
async fn completions(
    req: &poem::Request,
    Json(body): Json<serde_json::Value>,
    Data(state): Data<&Arc<MockState>>,
) -> Response {
    record_trace(req, state);
    respond(body, state, Dialect::OpenAi)
}

#[handler]
async fn messages(
    req: &poem::Request,
    Json(body): Json<serde_json::Value>,
    Data(state): Data<&Arc<MockState>>,
) -> Response {
    record_trace(req, state);
    respond(body, state, Dialect::Anthropic)
}

fn record_trace(req: &poem::Request, state: &MockState) {
    let tp = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    lock(&state.traceparents).push(tp);
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
        Behavior::ToolCalls { calls } => {
            let mut plan = Plan::new(Vec::new(), Duration::ZERO, Duration::ZERO, End::Finish);
            plan.tail = call_chunks(&calls, id, dialect)
                .into_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect();
            plan.ended = true;
            plan
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

/// The whole stream of a tool-call answer.
fn call_chunks(calls: &[(String, String)], id: u64, dialect: Dialect) -> Vec<Bytes> {
    use serde_json::json;
    let halves = |a: &str| {
        let mid = a
            .char_indices()
            .nth(a.chars().count() / 2)
            .map_or(a.len(), |(i, _)| i);
        [a[..mid].to_string(), a[mid..].to_string()]
    };
    let mut out = Vec::new();
    if dialect == Dialect::Anthropic {
        out.push(sse(&json!({"type": "message_start",
            "message": {"id": format!("mock-{id}"), "usage": {"input_tokens": 10, "output_tokens": 1}}})));
        for (k, (name, args)) in calls.iter().enumerate() {
            out.push(sse(&json!({"type": "content_block_start", "index": k,
                "content_block": {"type": "tool_use", "id": format!("toolu_mock_{id}_{k}"), "name": name, "input": {}}})));
            for half in halves(args) {
                out.push(sse(&json!({"type": "content_block_delta", "index": k,
                    "delta": {"type": "input_json_delta", "partial_json": half}})));
            }
            out.push(sse(&json!({"type": "content_block_stop", "index": k})));
        }
        out.push(sse(
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 3 * calls.len()}}),
        ));
        out.push(sse(&json!({"type": "message_stop"})));
        return out;
    }
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        sse(
            &json!({"id": format!("mock-{id}"), "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    out.push(chunk(json!({"role": "assistant", "content": null}), None));
    for (k, (name, args)) in calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": k, "id": format!("call_mock_{id}_{k}"),
            "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        for half in halves(args) {
            out.push(chunk(
                json!({"tool_calls": [{"index": k, "function": {"arguments": half}}]}),
                None,
            ));
        }
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    let n = 3 * calls.len();
    out.push(sse(
        &json!({"id": format!("mock-{id}"), "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}}),
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
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
