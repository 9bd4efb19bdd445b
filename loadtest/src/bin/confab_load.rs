//! Load tools against a running confab server.
//!
//! `delivery`: measures the time from the upstream sending a token to a WebSocket client
//! receiving it as a `delta`. Run the mock upstream with `--stamped` so every token's text is
//! its send time in µs since the epoch (same host, same clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Load tools for confab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upstream-token → client-delta latency over sequential turns in one room.
    Delivery {
        #[arg(long, default_value = "ws://127.0.0.1:8787/v1/ws")]
        url: String,
        /// Clients in the room (all measure every delta).
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Stop after at least this many deltas per client.
        #[arg(long, default_value_t = 1000)]
        tokens: u64,
        /// Print the summary as JSON too.
        #[arg(long)]
        json: bool,
    },
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn next_event(ws: &mut Ws) -> Result<serde_json::Value, String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| "timed out waiting for an event".to_string())?
            .ok_or("connection closed")?
            .map_err(|e| e.to_string())?;
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).map_err(|e| e.to_string());
        }
    }
}

async fn join(url: &str, room: &str, name: &str) -> Result<Ws, String> {
    let (mut ws, _) = connect_async(url).await.map_err(|e| e.to_string())?;
    let join = serde_json::json!({"type": "join", "room": room, "name": name});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let ev = next_event(&mut ws).await?;
        if ev["type"] == "presence" {
            return Ok(ws);
        }
        if ev["type"] == "error" {
            return Err(format!("join failed: {ev}"));
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    match Cli::parse().cmd {
        Cmd::Delivery {
            url,
            clients,
            tokens,
            json,
        } => delivery(&url, clients.max(1), tokens, json).await,
    }
}

async fn delivery(url: &str, clients: usize, tokens: u64, json: bool) -> Result<(), String> {
    let room = format!("bench-{}", now_us());
    let mut asker = join(url, &room, "asker").await?;
    let mut watchers = Vec::new();
    for i in 1..clients {
        watchers.push(join(url, &room, &format!("watcher{i}")).await?);
    }
    let mut tasks = Vec::new();
    for mut ws in watchers {
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist()?;
            while h.len() < tokens {
                let ev = next_event(&mut ws).await?;
                record(&mut h, &ev)?;
            }
            Ok::<_, String>(h)
        }));
    }
    let mut hist = new_hist()?;
    let mut turns = 0;
    while hist.len() < tokens {
        let p = serde_json::json!({"type": "prompt", "text": format!("turn {turns}")});
        asker
            .send(Message::Text(p.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        turns += 1;
        loop {
            let ev = next_event(&mut asker).await?;
            record(&mut hist, &ev)?;
            if ev["type"] == "end" {
                if ev["finish_reason"] != "stop" {
                    return Err(format!("turn ended with {ev}"));
                }
                break;
            }
        }
    }
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        hist.add(&h).map_err(|e| e.to_string())?;
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "delivery latency upstream token -> client delta ({} deltas, {clients} clients, {turns} turns)",
        hist.len()
    );
    println!(
        "  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0
    );
    if json {
        let out = serde_json::json!({
            "deltas": hist.len(), "clients": clients, "turns": turns,
            "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "p999_ms": q(0.999),
            "max_ms": hist.max() as f64 / 1000.0,
        });
        println!("{out}");
    }
    Ok(())
}

/// 1 µs .. 60 s, 3 significant digits.
fn new_hist() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

fn record(h: &mut Histogram<u64>, ev: &serde_json::Value) -> Result<(), String> {
    if ev["type"] != "delta" {
        return Ok(());
    }
    let sent: u64 = ev["text"]
        .as_str()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("delta is not a timestamp (run the mock with --stamped): {ev}"))?;
    h.record(now_us().saturating_sub(sent).max(1))
        .map_err(|e| e.to_string())
}
