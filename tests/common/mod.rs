//! Shared harness: the real server on 127.0.0.1:0, a scripted upstream, WebSocket clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod hostile;
pub mod mcp;

use std::net::SocketAddr;
use std::time::Duration;

use confab::Config;
use confab::config::{ChainConfig, ProviderEntry, ProviderKind};
use confab_loadtest::mock::{Behavior, MockUpstream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub mock: MockUpstream,
    pub shutdown: CancellationToken,
    pub running: Option<confab::Running>,
}

/// Test config: fast timers and the mock as upstream; `tweak` adjusts it per test.
pub fn config(mock: &MockUpstream, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::default();
    cfg.server.bind = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace_ms = 3_000;
    cfg.providers
        .insert("mock".into(), provider(&mock.base_url(), "mock-model"));
    cfg.chains.insert(
        "default".into(),
        ChainConfig {
            links: vec!["mock".into()],
            ..ChainConfig::default()
        },
    );
    // Suites about rooms and models run without the embedding model; retrieval tests turn
    // it on with `with_retrieval`.
    cfg.retrieval.enabled = false;
    // Suites about tenancy configure tenants and turn this off.
    cfg.auth.dev_mode = true;
    // Suites count deltas per upstream token; tests/coalesce.rs turns coalescing on.
    cfg.rooms.coalesce_ms = 0;
    tweak(&mut cfg);
    cfg
}

/// Turns retrieval on with the store in `dir` (the model comes from the default assets
/// folder that `scripts/fetch-models.sh` fills) and one small embedding worker.
pub fn with_retrieval(cfg: &mut Config, dir: &std::path::Path) {
    cfg.retrieval.enabled = true;
    // The server under test runs inside the test binary: uploads are parsed by the real
    // confab binary's `parse` subcommand, as in production.
    cfg.ingest.parser_bin = Some(env!("CARGO_BIN_EXE_confab").into());
    cfg.vector.data_dir = dir.to_path_buf();
    cfg.embedding.workers = 1;
}

/// An OpenAI-compatible provider entry with test-sized timeouts and no retries.
pub fn provider(base_url: &str, model: &str) -> ProviderEntry {
    ProviderEntry {
        kind: ProviderKind::Openai,
        base_url: base_url.into(),
        model: model.into(),
        first_token_timeout_ms: 2_000,
        idle_timeout_ms: 2_000,
        total_timeout_ms: 10_000,
        max_retries: 0,
        backoff_base_ms: 20,
        backoff_max_ms: 100,
        ..ProviderEntry::default()
    }
}

/// Waits until something listens on 127.0.0.1:`port` (a test server starting); panics
/// after 10 s.
pub async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

/// The sum of the samples of every series of `metric` in the Prometheus scrape at
/// `base_url` (0 when absent).
pub async fn scraped(base_url: &str, metric: &str) -> f64 {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The JSON chunks of a streamed OpenAI answer (the closing `[DONE]` left out).
pub fn sse_json(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.trim() != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("a chunk is JSON"))
        .collect()
}

/// Sets the default chain's links.
pub fn chain(cfg: &mut Config, links: &[&str]) {
    cfg.chains.insert(
        "default".into(),
        ChainConfig {
            links: links.iter().map(|s| s.to_string()).collect(),
            ..ChainConfig::default()
        },
    );
}

impl TestServer {
    pub async fn start(default: Behavior) -> Self {
        Self::start_with(default, |_| {}).await
    }

    pub async fn start_with(default: Behavior, tweak: impl FnOnce(&mut Config)) -> Self {
        let mock = MockUpstream::start(0, default).await.expect("mock");
        let cfg = config(&mock, tweak);
        let shutdown = CancellationToken::new();
        let running = confab::run(cfg, shutdown.clone())
            .await
            .expect("server starts");
        Self {
            addr: running.local_addr(),
            mock,
            shutdown,
            running: Some(running),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /v1/chat/completions` with `body`; the response unread.
    pub async fn chat_completion(&self, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.http("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .expect("chat completion request")
    }

    /// Waits up to `within` for the mock to see a stream aborted by confab; the count.
    pub async fn upstream_aborted(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        while self.mock.aborted() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.mock.aborted()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// A client that has joined `room` as `name` (welcome, resync and presence consumed).
    pub async fn joined(&self, room: &str, name: &str) -> Client {
        let mut c = self.client().await;
        c.join(room, name).await;
        c
    }

    /// Like [`TestServer::joined`], authenticated with API key `key`.
    pub async fn joined_with_key(&self, room: &str, name: &str, key: &str) -> Client {
        let auth = format!("Bearer {key}");
        let mut c = Client::connect_with(&self.ws_url(), &[("authorization", &auth)])
            .await
            .expect("upgrade accepted");
        c.join(room, name).await;
        c
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    pub last_seq: u64,
    /// The room log's epoch from the last `resync` (what a resume sends with `last_seq`).
    pub epoch: Value,
}

/// Adds tenant `name` with one key per `(user, key)`, and turns dev mode off.
pub fn tenant(cfg: &mut Config, name: &str, users: &[(&str, &str)]) {
    use confab::config::{KeyEntry, TenantConfig};
    cfg.auth.dev_mode = false;
    let keys = users
        .iter()
        .map(|(user, key)| KeyEntry {
            user: user.to_string(),
            sha256: confab::auth::keys::hash_text(key),
        })
        .collect();
    cfg.auth.tenants.insert(
        name.into(),
        TenantConfig {
            keys,
            ..TenantConfig::default()
        },
    );
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(url, &[]).await.expect("ws connect")
    }

    /// Connects with extra upgrade headers; `Err` is the HTTP status of a refused upgrade.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().expect("ws url");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let ws = match connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16());
            }
            Err(e) => panic!("ws connect: {e}"),
        };
        let mut c = Client {
            ws,
            welcome: Value::Null,
            last_seq: 0,
            epoch: Value::Null,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        Ok(c)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    /// Joins and consumes the events up to and including this member's own presence.
    pub async fn join(&mut self, room: &str, name: &str) {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        let me = self.welcome["session_id"].clone();
        loop {
            let ev = self.recv().await;
            if ev["type"] == "presence"
                && ev["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|x| x["session_id"] == me))
            {
                return;
            }
            assert_ne!(ev["type"], "error", "join failed: {ev}");
        }
    }

    /// The next JSON event (text frame), skipping pings; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for an event")
                .expect("stream ended")
                .expect("ws error");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    if let Some(s) = v["seq"].as_u64() {
                        self.last_seq = s;
                    }
                    if v["type"] == "resync" {
                        self.epoch = v["snapshot"]["epoch"].clone();
                    }
                    return v;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Events up to and including the next `end`.
    pub async fn until_end(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let ev = self.recv().await;
            let end = ev["type"] == "end";
            out.push(ev);
            if end {
                return out;
            }
        }
    }

    /// Events until one of type `ty` (included).
    pub async fn until_type(&mut self, ty: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let ev = self.recv().await;
            let hit = ev["type"] == ty;
            out.push(ev);
            if hit {
                return out;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("ws error before close: {e}"),
                None => panic!("stream ended without close frame"),
            }
        }
    }
}

/// The concatenated `delta` texts of a turn's events.
pub fn answer(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "delta")
        .filter_map(|e| e["text"].as_str())
        .collect()
}

/// Event types in order.
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}
