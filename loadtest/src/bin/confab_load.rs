//! Load tools against a running confab (or any OpenAI-compatible server for `openai`).
//!
//! Latencies use stamped tokens where possible: run the mock upstream with `--stamped` so every
//! token's text is its send time in µs (same host, same clock); a client's delay is then its
//! receive time minus the stamp. Load is open-loop: work is scheduled at a fixed rate whether
//! or not earlier work finished, and latency counts from the scheduled time, so a stalled
//! server cannot hide its queueing (coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use confab_loadtest::bench::{self, ProcSample};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(about = "Load tools for confab")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Write the summary (histograms as percentiles) to this JSON file too.
    #[arg(long, global = true)]
    json_out: Option<std::path::PathBuf>,
    /// Runtime threads of the load tool. One keeps its sockets' readiness on one busy thread
    /// (fewer wake-ups per event), so on a small machine the cores stay with the server.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upstream-token → client-delta latency over sequential turns in one room.
    Delivery {
        #[arg(long, default_value = "ws://127.0.0.1:8787/v1/ws")]
        url: String,
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Stop after at least this many deltas per client.
        #[arg(long, default_value_t = 1000)]
        tokens: u64,
    },
    /// Many idle WebSocket clients: the server's memory per connected client.
    Idle {
        #[arg(long, default_value = "ws://127.0.0.1:8787/v1/ws")]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        /// The server's process id (for RSS).
        #[arg(long)]
        pid: u32,
        /// Seconds to stay connected after all joined.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// Rooms × clients, a prompt per room every `prompt_every_ms` (open loop): delta events/s
    /// delivered and their delivery latency.
    Fanout {
        #[arg(long, default_value = "ws://127.0.0.1:8787/v1/ws")]
        url: String,
        /// Several nodes of one cluster (comma-separated WebSocket URLs), instead of `--url`:
        /// the k-th client of every room connects to node k mod N, so each room has members
        /// on every node.
        #[arg(long, value_delimiter = ',')]
        urls: Vec<String>,
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        per_room: usize,
        #[arg(long, default_value_t = 3_000)]
        prompt_every_ms: u64,
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// The server's process ids (comma-separated for several nodes: CPU and RSS add up).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// Print RSS and CPU every this many seconds (soak runs).
        #[arg(long, default_value_t = 0)]
        sample_every: u64,
    },
    /// Streamed chat completions at `rate` requests/s (open loop) against an OpenAI-compatible
    /// endpoint: TTFT, per-token delay (stamped) or gap, throughput, errors.
    Openai {
        /// Base URL, e.g. http://127.0.0.1:8787/v1
        #[arg(long)]
        base: String,
        #[arg(long, default_value = "default")]
        model: String,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long)]
        pid: Option<u32>,
        /// Sent as the bearer token (LiteLLM wants one).
        #[arg(long, default_value = "sk-load")]
        api_key: String,
    },
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_event(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
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
    let sep = if url.contains('?') { '&' } else { '?' };
    // Small read buffers: thousands of clients in one process, and tungstenite zero-fills the
    // whole buffer before every read (a 4 KiB memset per ~150-byte event was 6 % of the
    // fanout profile). A larger frame grows the buffer as needed.
    let cfg = WebSocketConfig::default().read_buffer_size(1024);
    let (mut ws, _) = connect_async_with_config(format!("{url}{sep}room={room}"), Some(cfg), true)
        .await
        .map_err(|e| e.to_string())?;
    let join = json!({"type": "join", "room": room, "name": name});
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

/// Joins `n` clients with at most `parallel` handshakes in flight.
async fn join_many(
    urls: &[String],
    n: usize,
    rooms: usize,
    parallel: usize,
) -> Result<Vec<(usize, Ws)>, String> {
    let urls = Arc::new(urls.to_vec());
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let urls = urls.clone();
            async move {
                let room = i % rooms.max(1);
                // The k-th member of every room goes to node k mod N.
                let url = &urls[(i / rooms.max(1)) % urls.len().max(1)];
                join(url, &format!("load-{room}"), &format!("c{i}"))
                    .await
                    .map(|ws| (room, ws))
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

fn emit(out: &Option<std::path::PathBuf>, v: &Value) -> Result<(), String> {
    if let Some(path) = out {
        let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn print_proc(p: &Value) {
    if let (Some(c), Some(a), Some(b)) = (
        p["cpu_cores"].as_f64(),
        p["rss_start_mib"].as_f64(),
        p["rss_end_mib"].as_f64(),
    ) {
        println!("  server: {c:.2} cores, RSS {a:.1} → {b:.1} MiB");
    }
}

fn proc_json(a: Option<ProcSample>, b: Option<ProcSample>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!({
            "cpu_cores": bench::cpu_cores(&a, &b),
            "rss_start_mib": a.rss_bytes as f64 / 1048576.0,
            "rss_end_mib": b.rss_bytes as f64 / 1048576.0,
        }),
        _ => Value::Null,
    }
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let summary = runtime.map_err(|e| e.to_string())?.block_on(run(cli.cmd))?;
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    emit(&cli.json_out, &summary)
}

async fn run(cmd: Cmd) -> Result<Value, String> {
    let summary = match cmd {
        Cmd::Delivery {
            url,
            clients,
            tokens,
        } => delivery(&url, clients.max(1), tokens).await?,
        Cmd::Idle {
            url,
            clients,
            rooms,
            pid,
            hold,
        } => idle(&url, clients, rooms, pid, hold).await?,
        Cmd::Fanout {
            url,
            urls,
            rooms,
            per_room,
            prompt_every_ms,
            duration,
            pid,
            sample_every,
        } => {
            let urls = if urls.is_empty() { vec![url] } else { urls };
            fanout(
                &urls,
                rooms,
                per_room,
                prompt_every_ms,
                duration,
                pid,
                sample_every,
            )
            .await?
        }
        Cmd::Openai {
            base,
            model,
            rate,
            duration,
            pid,
            api_key,
        } => openai(&base, &model, rate, duration, pid, &api_key).await?,
    };
    Ok(summary)
}

async fn delivery(url: &str, clients: usize, tokens: u64) -> Result<Value, String> {
    let room = format!("bench-{}", bench::now_us());
    let mut asker = join(url, &room, "asker").await?;
    let mut watchers = Vec::new();
    for i in 1..clients {
        watchers.push(join(url, &room, &format!("watcher{i}")).await?);
    }
    let mut tasks = Vec::new();
    for mut ws in watchers {
        tasks.push(tokio::spawn(async move {
            let mut h = bench::hist()?;
            while h.len() < tokens {
                let ev = next_event(&mut ws).await?;
                record_delta(&mut h, &ev)?;
            }
            Ok::<_, String>(h)
        }));
    }
    let mut hist = bench::hist()?;
    let mut turns = 0;
    while hist.len() < tokens {
        let p = json!({"type": "prompt", "text": format!("turn {turns}")});
        asker
            .send(Message::Text(p.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        turns += 1;
        loop {
            let ev = next_event(&mut asker).await?;
            record_delta(&mut hist, &ev)?;
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
    println!("delivery latency upstream token -> client delta ({clients} clients, {turns} turns)");
    println!("{}", bench::line("delivery", &hist));
    Ok(
        json!({"scenario": "delivery", "clients": clients, "turns": turns, "delivery": bench::summary(&hist)}),
    )
}

fn record_delta(h: &mut Histogram<u64>, ev: &Value) -> Result<(), String> {
    if ev["type"] != "delta" {
        return Ok(());
    }
    let ages = bench::stamp_ages_us(ev["text"].as_str().unwrap_or_default());
    if ages.is_empty() {
        return Err(format!(
            "delta is not a timestamp (run the mock with --stamped): {ev}"
        ));
    }
    for age in ages {
        bench::record(h, age);
    }
    Ok(())
}

async fn idle(
    url: &str,
    clients: usize,
    rooms: usize,
    pid: u32,
    hold: u64,
) -> Result<Value, String> {
    let before = bench::sample(pid).ok_or("cannot read the server's /proc entry")?;
    let t0 = Instant::now();
    let conns = join_many(&[url.to_string()], clients, rooms, 256).await?;
    let joined_in = t0.elapsed();
    // Keep reading so pings are answered; count anything unexpected.
    let closed = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (_, mut ws) in conns {
        let closed = closed.clone();
        readers.push(tokio::spawn(async move {
            while let Some(msg) = ws.next().await {
                if msg.is_err() || matches!(msg, Ok(Message::Close(_))) {
                    closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bench::sample(pid).ok_or("cannot read the server's /proc entry")?;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let per_client = (after.rss_bytes.saturating_sub(before.rss_bytes)) as f64 / clients as f64;
    println!(
        "idle: {clients} clients in {rooms} rooms joined in {:.1} s; server RSS {:.1} → {:.1} MiB: {:.1} KiB per client; {} closed while idle",
        joined_in.as_secs_f64(),
        before.rss_bytes as f64 / 1048576.0,
        after.rss_bytes as f64 / 1048576.0,
        per_client / 1024.0,
        closed.load(Ordering::Relaxed)
    );
    for r in readers {
        r.abort();
    }
    Ok(json!({
        "scenario": "idle", "clients": clients, "rooms": rooms, "join_seconds": joined_in.as_secs_f64(),
        "rss_before_mib": before.rss_bytes as f64 / 1048576.0, "rss_after_mib": after.rss_bytes as f64 / 1048576.0,
        "rss_per_client_kib": per_client / 1024.0, "closed": closed.load(Ordering::Relaxed),
    }))
}

/// The fields of a server event the fanout readers count.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Default)]
struct Tally {
    deltas: u64,
    /// Stamped tokens those deltas carried (more than `deltas` when they were coalesced).
    tokens: u64,
    turns: u64,
    errors: BTreeMap<String, u64>,
    disconnects: u64,
}

async fn fanout(
    urls: &[String],
    rooms: usize,
    per_room: usize,
    every_ms: u64,
    duration: u64,
    pids: Vec<u32>,
    sample_every: u64,
) -> Result<Value, String> {
    let t0 = Instant::now();
    let conns = join_many(urls, rooms * per_room, rooms, 256).await?;
    println!(
        "fanout: {} clients in {rooms} rooms joined in {:.1} s",
        conns.len(),
        t0.elapsed().as_secs_f64()
    );
    // One histogram for all readers (a lock per delta is cheaper than ten thousand
    // histograms that each grow to cover seconds).
    let hist = Arc::new(std::sync::Mutex::new(bench::hist()?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Instant::now() + Duration::from_secs(duration);
    let mut askers: BTreeMap<usize, futures_util::stream::SplitSink<Ws, Message>> = BTreeMap::new();
    let mut readers = Vec::new();
    for (room, ws) in conns {
        let (sink, mut stream) = ws.split();
        if let std::collections::btree_map::Entry::Vacant(e) = askers.entry(room) {
            e.insert(sink);
        }
        let (hist, tally) = (hist.clone(), tally.clone());
        readers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            // One deadline per reader: a `timeout_at` per event registered and removed a
            // timer for every event (4 % of the profile).
            let deadline = tokio::time::sleep_until(stop.into());
            tokio::pin!(deadline);
            loop {
                let msg = tokio::select! {
                    biased;
                    m = stream.next() => m,
                    _ = &mut deadline => None,
                };
                let Some(msg) = msg else { break };
                let Ok(Message::Text(text)) = msg else {
                    if msg.is_err() {
                        t.disconnects += 1;
                        break;
                    }
                    continue;
                };
                // Only the fields counted are decoded: the reader stays cheap per event, so
                // the run measures confab rather than the load tool.
                let Ok(ev) = serde_json::from_str::<Event<'_>>(&text) else {
                    continue;
                };
                match ev.kind.as_ref() {
                    "delta" => {
                        let ages = bench::stamp_ages_us(ev.text.as_deref().unwrap_or_default());
                        t.tokens += ages.len() as u64;
                        if let Ok(mut h) = hist.lock() {
                            for age in ages {
                                bench::record(&mut h, age);
                            }
                        }
                        t.deltas += 1;
                    }
                    "end" => t.turns += 1,
                    "error" => {
                        let code = ev.code.as_deref().unwrap_or("?").to_string();
                        *t.errors.entry(code).or_default() += 1;
                    }
                    _ => {}
                }
            }
            let mut g = tally.lock().await;
            g.deltas += t.deltas;
            g.tokens += t.tokens;
            g.turns += t.turns;
            g.disconnects += t.disconnects;
            for (k, v) in t.errors {
                *g.errors.entry(k).or_default() += v;
            }
        }));
    }
    let start = bench::sample_all(&pids);
    let run_t0 = Instant::now();
    // One prompt per room every `every_ms`, staggered across the interval; open loop.
    let mut prompters = Vec::new();
    let n_rooms = askers.len().max(1) as u64;
    for (i, (room, mut sink)) in askers.into_iter().enumerate() {
        let offset = Duration::from_millis(every_ms * i as u64 / n_rooms);
        prompters.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_millis(every_ms),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut k = 0u64;
            while Instant::now() < stop {
                tick.tick().await;
                let p = json!({"type": "prompt", "text": format!("room {room} prompt {k}")});
                if sink
                    .send(Message::Text(p.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                k += 1;
            }
            k
        }));
    }
    let mut samples = Vec::new();
    if sample_every > 0 && !pids.is_empty() {
        while Instant::now() + Duration::from_secs(sample_every) <= stop {
            tokio::time::sleep(Duration::from_secs(sample_every)).await;
            if let Some(s) = bench::sample_all(&pids) {
                println!(
                    "  t={:>5.0}s rss {:.1} MiB",
                    run_t0.elapsed().as_secs_f64(),
                    s.rss_bytes as f64 / 1048576.0
                );
                samples.push(json!({"t": run_t0.elapsed().as_secs_f64(), "rss_mib": s.rss_bytes as f64 / 1048576.0}));
            }
        }
    }
    let mut prompts = 0;
    for p in prompters {
        prompts += p.await.unwrap_or(0);
    }
    let end = bench::sample_all(&pids);
    for r in readers {
        let _ = r.await;
    }
    let secs = run_t0.elapsed().as_secs_f64();
    let tally = tally.lock().await;
    let hist = hist.lock().map_err(|_| "a reader panicked".to_string())?;
    println!(
        "fanout: {rooms} rooms × {per_room} clients, {prompts} prompts in {secs:.0} s: {} turns ended, {:.0} delta events/s ({:.0} tokens/s) delivered, {} disconnects, errors {:?}",
        tally.turns / per_room as u64,
        tally.deltas as f64 / secs,
        tally.tokens as f64 / secs,
        tally.disconnects,
        tally.errors
    );
    println!("{}", bench::line("delivery (stamped)", &hist));
    let proc = proc_json(start, end);
    print_proc(&proc);
    Ok(json!({
        "scenario": "fanout", "nodes": urls.len(), "rooms": rooms, "per_room": per_room, "prompt_every_ms": every_ms,
        "seconds": secs, "prompts": prompts, "turns": tally.turns / per_room as u64,
        "delta_events_per_sec": tally.deltas as f64 / secs,
        "tokens_per_sec": tally.tokens as f64 / secs, "disconnects": tally.disconnects,
        "errors": tally.errors, "delivery": bench::summary(&hist), "server": proc, "rss_samples": samples,
    }))
}

struct StreamResult {
    ttft_us: Option<u64>,
    token_us: Vec<u64>,
    tokens: u64,
    error: Option<String>,
}

/// One streamed completion; TTFT counts from `scheduled` (open loop).
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    key: &str,
    scheduled: Instant,
) -> StreamResult {
    let mut r = StreamResult {
        ttft_us: None,
        token_us: Vec::new(),
        tokens: 0,
        error: None,
    };
    let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say something."}]});
    let resp = match client.post(url).bearer_auth(key).json(&body).send().await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            r.error = Some(format!("HTTP {}", resp.status().as_u16()));
            return r;
        }
        Err(e) => {
            r.error = Some(if e.is_connect() {
                "connect".into()
            } else {
                "transport".into()
            });
            return r;
        }
    };
    let mut buf = String::new();
    let mut last: Option<Instant> = None;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            r.error = Some("cut".into());
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                return r;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let Some(text) = v["choices"][0]["delta"]["content"].as_str() else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let now = Instant::now();
            if r.ttft_us.is_none() {
                r.ttft_us = Some(now.duration_since(scheduled).as_micros() as u64);
            }
            // Stamped tokens give the delay since the upstream sent them; otherwise the gap.
            // A chunk coalesced from several tokens carries each one's stamp.
            let ages = bench::stamp_ages_us(text);
            if ages.is_empty() {
                if let Some(l) = last {
                    r.token_us.push(now.duration_since(l).as_micros() as u64);
                }
                r.tokens += 1;
            } else {
                r.tokens += ages.len() as u64;
                r.token_us.extend(ages);
            }
            last = Some(now);
        }
    }
    r
}

async fn openai(
    base: &str,
    model: &str,
    rate: f64,
    duration: u64,
    pid: Option<u32>,
    key: &str,
) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let start = pid.and_then(bench::sample);
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let n = (duration as f64 * rate).round() as u64;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let scheduled = t0 + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, url, model, key) = (
            client.clone(),
            url.clone(),
            model.to_string(),
            key.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            one_stream(&client, &url, &model, &key, scheduled).await
        }));
    }
    let (mut ttft, mut token) = (bench::hist()?, bench::hist()?);
    let (mut ok, mut tokens) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        if let Some(e) = r.error {
            *errors.entry(e).or_default() += 1;
            continue;
        }
        ok += 1;
        tokens += r.tokens;
        if let Some(v) = r.ttft_us {
            bench::record(&mut ttft, v);
        }
        for v in r.token_us {
            bench::record(&mut token, v);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let end = pid.and_then(bench::sample);
    println!(
        "openai {url} model {model}: {n} requests at {rate}/s (open loop), {ok} ok, {:.1} req/s, {:.0} tokens/s, errors {errors:?}",
        ok as f64 / secs,
        tokens as f64 / secs
    );
    println!("{}", bench::line("time to first token", &ttft));
    println!("{}", bench::line("per token (stamp age or gap)", &token));
    let proc = proc_json(start, end);
    print_proc(&proc);
    Ok(json!({
        "scenario": "openai", "url": url, "model": model, "rate": rate, "requests": n, "ok": ok,
        "seconds": secs, "req_per_sec": ok as f64 / secs, "tokens_per_sec": tokens as f64 / secs,
        "errors": errors, "ttft": bench::summary(&ttft), "per_token": bench::summary(&token), "server": proc,
    }))
}
