//! Traces over OTLP, checked from outside: the real `confab` binary exports to a real
//! OTLP/HTTP receiver (PyPI `oteltap`, started here; scripts/test.sh installs it and sets
//! `CONFAB_TEST_OTEL_PYTHON`), with the scripted mock as its upstream. The span trees of a
//! RAG turn and of an upload, the client's `traceparent` as the parent and on the upstream
//! request, no prompt text unless captured, and a collector that goes away mid-run: turns
//! go on, lost spans are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Client;
use common::cluster::free_port;
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

const WAL_DOC: &str = "After a crash, Larkspur replays its write-ahead log from the last \
checkpoint, so committed transactions survive. Checkpoints run every five minutes.";

/// The client's contexts: version-00 traceparents with known trace and parent ids.
const UPLOAD_TP: &str = "00-11111111111111111111111111111111-1111111111111111-01";
const TURN_TP: &str = "00-22222222222222222222222222222222-2222222222222222-01";
const WS_TP: &str = "00-33333333333333333333333333333333-3333333333333333-01";

fn python() -> String {
    std::env::var("CONFAB_TEST_OTEL_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/confab/tools/otel-venv/bin/python")
    })
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The OTLP receiver: every span it gets, one JSON object per line in `out`.
struct Tap {
    proc: Option<Proc>,
    out: PathBuf,
    port: u16,
}

impl Tap {
    async fn start(dir: &Path) -> Self {
        let port = free_port();
        let out = dir.join("spans.ndjson");
        let child = Command::new(python())
            .args(["-m", "oteltap", "--port", &port.to_string()])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("oteltap starts (PyPI oteltap; see scripts/test.sh)");
        common::wait_port(port).await;
        Self {
            proc: Some(Proc(child)),
            out,
            port,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["spanId"].is_string())
            .collect()
    }

    /// The spans of `trace`, once one named `last` has arrived.
    async fn trace(&self, trace: &str, last: &str) -> Vec<Value> {
        for _ in 0..200 {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["traceId"] == trace)
                .collect();
            if spans.iter().any(|s| s["name"] == last) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {last} span of trace {trace}: {:?}", self.spans());
    }

    fn stop(&mut self) {
        self.proc = None;
    }
}

/// The `confab` binary with the mock as its only link and traces sent to `tap`.
async fn confab(dir: &Path, mock: &MockUpstream, tap: &Tap, extra: &str) -> (Proc, String) {
    let port = free_port();
    let config = format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\n[auth]\ndev_mode = true\n\
         [vector]\ndata_dir = \"{data}\"\n[embedding]\nworkers = 1\n\
         [providers.mock]\nkind = \"openai\"\nbase_url = \"{upstream}\"\nmodel = \"mock-model\"\n\
         [chains.default]\nlinks = [\"mock\"]\n\
         [telemetry]\notlp_endpoint = \"http://127.0.0.1:{otlp}\"\nservice_name = \"confab-test\"\n{extra}",
        data = dir.join("data").display(),
        upstream = mock.base_url(),
        otlp = tap.port,
    );
    let file = dir.join("confab.toml");
    std::fs::write(&file, config).unwrap();
    let log = std::fs::File::create(dir.join("confab.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            return (proc, base);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("confab did not get ready");
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
}

fn children<'a>(spans: &'a [Value], parent: &Value) -> Vec<&'a str> {
    let mut names: Vec<&str> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == parent["spanId"])
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    let found = span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key).map(|kv| &kv["value"]));
    found.unwrap_or(&Value::Null)
}

fn trace_id(tp: &str) -> &str {
    &tp[3..35]
}

fn parent_id(tp: &str) -> &str {
    &tp[36..52]
}

async fn post(url: String, tp: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("traceparent", tp)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_rag_turn_and_an_upload_are_traced_with_the_clients_context() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let tap = Tap::start(dir.path()).await;
    let mock = MockUpstream::start(0, Behavior::text(&["It replays ", "the WAL [1]."]))
        .await
        .unwrap();
    let (_confab, base) = confab(dir.path(), &mock, &tap, "").await;

    // One upload: the request's span and its job's phases, in the client's trace.
    let body = json!({"title": "Larkspur internals", "text": WAL_DOC});
    let up = post(format!("{base}/v1/documents?wait=true"), UPLOAD_TP, body).await;
    assert_eq!(up.status(), 200);
    let spans = tap.trace(trace_id(UPLOAD_TP), "publish").await;
    let upload = named(&spans, "upload");
    assert_eq!(upload["parentSpanId"], parent_id(UPLOAD_TP));
    let ingest = named(&spans, "ingest");
    assert_eq!(ingest["parentSpanId"], upload["spanId"]);
    assert_eq!(
        children(&spans, ingest),
        ["chunk", "embed.batch", "parse", "publish", "upsert"]
    );

    // One RAG turn through the OpenAI endpoint.
    let ask = json!({"model": "confab-rag",
                     "messages": [{"role": "user", "content": "How does Larkspur recover after a crash?"}]});
    let resp = post(format!("{base}/v1/chat/completions"), TURN_TP, ask).await;
    assert_eq!(resp.status(), 200);
    let header = resp.headers()["x-confab-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(header, trace_id(TURN_TP));
    let spans = tap.trace(trace_id(TURN_TP), "turn").await;
    let turn = named(&spans, "turn");
    assert_eq!(
        turn["parentSpanId"],
        parent_id(TURN_TP),
        "the client's span is the parent"
    );
    assert_eq!(
        children(&spans, turn),
        [
            "admit",
            "augment",
            "cache.lookup",
            "embed",
            "provider.attempt",
            "settle",
            "vector.search"
        ]
    );
    let attempt = named(&spans, "provider.attempt");
    assert_eq!(children(&spans, attempt), ["first_token", "stream"]);
    assert_eq!(attr(attempt, "gen_ai.system")["stringValue"], "openai");
    assert_eq!(
        attr(turn, "gen_ai.request.model")["stringValue"],
        "mock-model"
    );
    assert_eq!(
        attr(turn, "gen_ai.response.model")["stringValue"],
        "mock-model"
    );
    assert_eq!(attr(turn, "confab.chain")["stringValue"], "default");
    assert_eq!(attr(turn, "confab.tenant")["stringValue"], "default");
    assert_eq!(attr(turn, "confab.retrieval.hits")["intValue"], "1");
    assert!(attr(turn, "gen_ai.usage.input_tokens")["intValue"].is_string());
    assert!(attr(turn, "gen_ai.usage.output_tokens")["intValue"].is_string());
    let reasons = &attr(turn, "gen_ai.response.finish_reasons")["arrayValue"]["values"];
    assert_eq!(reasons[0]["stringValue"], "stop");
    let all = serde_json::to_string(&spans).unwrap();
    assert!(!all.contains("Larkspur recover"), "no prompt text: {all}");
    assert!(!all.contains("replays "), "no answer text");

    // The context went upstream: the model server's parent is the attempt's wait for its
    // first token (the request is sent in it).
    let sent = mock.traceparents();
    let tp = sent
        .last()
        .cloned()
        .flatten()
        .expect("traceparent sent upstream");
    assert_eq!(trace_id(&tp), trace_id(TURN_TP));
    let waiting = named(&spans, "first_token");
    assert_eq!(waiting["parentSpanId"], attempt["spanId"]);
    assert_eq!(parent_id(&tp), waiting["spanId"].as_str().unwrap());
}

async fn counter(base: &str, name: &str) -> f64 {
    common::scraped(base, name).await
}

async fn ask_default(base: &str, text: &str) -> Value {
    let ask = json!({"model": "default", "messages": [{"role": "user", "content": text}]});
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn rooms_join_the_upgrades_trace_captures_are_redacted_and_a_lost_collector_costs_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut tap = Tap::start(dir.path()).await;
    let mock = MockUpstream::start(0, Behavior::text(&["fine ", "answer"]))
        .await
        .unwrap();
    let extra = "capture_ratio = 1.0\n[retrieval]\nenabled = false\n";
    let (_confab, base) = confab(dir.path(), &mock, &tap, extra).await;

    // A room turn: its trace continues the WebSocket upgrade's, and `metrics` says so.
    let ws = base.replace("http://", "ws://") + "/v1/ws";
    let mut c = Client::connect_with(&ws, &[("traceparent", WS_TP)])
        .await
        .unwrap();
    c.join("ops", "ann").await;
    let secret = "my key is sk-live-0123456789abcdefghijklmnop";
    c.send(json!({"type": "prompt", "text": secret})).await;
    let events = c.until_end().await;
    let metrics = events.iter().find(|e| e["type"] == "metrics").unwrap();
    assert_eq!(metrics["trace_id"], trace_id(WS_TP));
    let spans = tap.trace(trace_id(WS_TP), "turn").await;
    assert_eq!(named(&spans, "turn")["parentSpanId"], parent_id(WS_TP));

    // Captured (ratio 1): the texts as span events, redacted.
    let all = serde_json::to_string(&spans).unwrap();
    assert!(all.contains("\"capture\""), "{all}");
    assert!(all.contains("my key is [redacted:secret]"), "{all}");
    assert!(!all.contains("sk-live-0123456789"), "{all}");
    let log = std::fs::read_to_string(dir.path().join("confab.log")).unwrap();
    assert!(!log.contains("my key is"), "captures never reach the log");
    assert!(counter(&base, "confab_trace_spans_exported_total").await > 0.0);

    // The collector goes away: turns answer as before; their spans are counted as lost.
    tap.stop();
    for i in 0..5 {
        let answer = ask_default(&base, &format!("question {i}")).await;
        assert_eq!(answer["choices"][0]["message"]["content"], "fine answer");
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = counter(&base, "confab_trace_spans_dropped_total").await;
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0.0, "lost spans are counted");
}
