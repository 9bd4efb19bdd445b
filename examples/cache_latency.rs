//! Cache-hit latency (not a test): `cargo run --release --example cache_latency`.
//!
//! Starts confab in-process with the embedded store and the mock upstream, asks one question
//! once (a miss), then asks it again from N fresh rooms and measures prompt → `end` on a
//! loopback WebSocket for exact hits and for semantic (paraphrase) hits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use confab::config::{ChainConfig, ProviderEntry};
use confab_loadtest::mock::{Behavior, MockUpstream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> serde_json::Value {
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn turn(url: &str, room: &str, prompt: &str) -> (Duration, serde_json::Value) {
    let (mut ws, _) = connect_async(url).await.unwrap();
    let join = serde_json::json!({"type": "join", "room": room, "name": "bench"});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    while next(&mut ws).await["type"] != "presence" {}
    let p = serde_json::json!({"type": "prompt", "text": prompt});
    let t0 = Instant::now();
    ws.send(Message::Text(p.to_string().into())).await.unwrap();
    let mut start = serde_json::Value::Null;
    loop {
        let ev = next(&mut ws).await;
        if ev["type"] == "start" {
            start = ev.clone();
        }
        if ev["type"] == "end" {
            return (t0.elapsed(), start);
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mock = MockUpstream::start(0, Behavior::tokens(40, Duration::from_millis(5)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = confab::Config::default();
    cfg.server.bind = "127.0.0.1:0".parse().unwrap();
    cfg.vector.data_dir = dir.path().to_path_buf();
    cfg.embedding.workers = 1;
    cfg.rooms.max_rooms = n * 2 + 10;
    // One keyless tenant (the example connects without a key).
    cfg.auth.dev_mode = true;
    // No uploads here, so no parser process is needed.
    cfg.ingest.isolate_parsing = false;
    cfg.providers.insert(
        "mock".into(),
        ProviderEntry {
            base_url: mock.base_url(),
            model: "mock".into(),
            ..ProviderEntry::default()
        },
    );
    cfg.chains.insert(
        "default".into(),
        ChainConfig {
            links: vec!["mock".into()],
            ..ChainConfig::default()
        },
    );
    let running = confab::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let url = format!("ws://{}/v1/ws", running.local_addr());
    let question = "How does the write-ahead log help after a crash?";
    let (miss, _) = turn(&url, "warm", question).await;
    println!(
        "miss (40 tokens at 5 ms): {:.1} ms",
        miss.as_secs_f64() * 1000.0
    );
    for (label, prompt) in [
        ("exact", question),
        (
            "semantic",
            "How does the write-ahead log help after crashing?",
        ),
    ] {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let (d, start) = turn(&url, &format!("{label}-{i}"), prompt).await;
            assert_eq!(start["cached"]["layer"], label, "{start}");
            lat.push(d);
        }
        println!(
            "{label} hits over {n} fresh rooms, prompt -> end: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms (goal p99 < 10 ms)",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
    assert_eq!(
        mock.requests().len(),
        1,
        "only the first question reached the model"
    );
}
