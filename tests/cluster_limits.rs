//! Cluster mode's limits: real `confab` processes on one real `redis-server`. A tenant's
//! USD/day budget holds over 100 concurrent turns spread over three nodes, concurrent turns
//! hold cluster-wide, and a node killed while it holds turn slots and reservations gives
//! them back within the lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Node, NodeConfig, Redis};
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

/// $0.01 per token in and out: a turn's worst case is a few dollars, its real cost cents.
const PRICE_PER_MTOK: f64 = 10_000.0;
const MAX_TOKENS: u32 = 100;
const TOKENS_PER_TURN: usize = 20;
const LEASE_MS: u64 = 2_000;
const KEY: &str = "acme-key";

/// Three nodes of tenant `acme` (key [`KEY`], user ann) with `limits`, on one Redis.
async fn nodes(
    reply: Behavior,
    limits: &str,
) -> (Vec<Node>, MockUpstream, Redis, tempfile::TempDir) {
    let mock = MockUpstream::start(0, reply).await.expect("mock");
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = confab::auth::keys::hash_text(KEY);
    let config = NodeConfig {
        provider: format!(
            "price_input_per_mtok = {PRICE_PER_MTOK}\nprice_output_per_mtok = {PRICE_PER_MTOK}\nmax_tokens = {MAX_TOKENS}"
        ),
        auth: format!(
            "[auth.tenants.acme]\nkeys = [{{ user = \"ann\", sha256 = \"{hash}\" }}]\nlimits = {{ {limits} }}"
        ),
        ..NodeConfig::new(&mock.base_url(), &redis.url(), LEASE_MS)
    }
    .write(dir.path());
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(Node::start(&format!("node{i}"), &config).await);
    }
    (out, mock, redis, dir)
}

/// One turn through a node's OpenAI endpoint: status, Retry-After, body.
async fn ask(http: &reqwest::Client, node: &str, i: usize) -> (u16, Option<u64>, Value) {
    let r = http
        .post(format!("{node}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": format!("question {i}")}]}))
        .send()
        .await;
    let Ok(r) = r else {
        return (0, None, Value::Null);
    };
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let status = r.status().as_u16();
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

async fn usage(http: &reqwest::Client, node: &Node) -> Value {
    http.get(node.http("/v1/usage"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_budget_holds_over_100_concurrent_turns_on_three_nodes() {
    const BUDGET_USD: f64 = 5.0;
    let reply = Behavior::tokens(TOKENS_PER_TURN, Duration::from_millis(2));
    let (nodes, mock, _redis, _dir) = nodes(reply, &format!("usd_per_day = {BUDGET_USD}")).await;
    let http = reqwest::Client::new();
    let urls: Vec<String> = nodes.iter().map(|n| n.http("")).collect();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (http, url) = (http.clone(), urls[i % 3].clone());
            tokio::spawn(async move {
                let mut ok = 0u32;
                loop {
                    let (status, retry, body) = ask(&http, &url, i).await;
                    match status {
                        200 => ok += 1,
                        429 => {
                            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                            // Spent until midnight: stop. Otherwise turns are still settling.
                            if retry.unwrap_or(0) > 60 {
                                return ok;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        s => panic!("unexpected status {s}: {body}"),
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    // Settlements are written in the background: wait until none is outstanding.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let mut seen = Vec::new();
        for n in &nodes {
            seen.push(usage(&http, n).await);
        }
        if seen.iter().all(|u| u["usd_reserved"].as_f64() == Some(0.0)) || Instant::now() > deadline
        {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spent = seen[0]["usd_today"].as_f64().unwrap();
    let served = mock.completed() as f64 * (10 + TOKENS_PER_TURN) as f64 * PRICE_PER_MTOK / 1e6;
    println!(
        "budget {BUDGET_USD} USD over 3 nodes: {ok} turns, spent {spent:.2} (served {served:.2})"
    );
    assert!(
        seen.iter().all(|u| u == &seen[0]),
        "one view from every node: {seen:?}"
    );
    assert_eq!(seen[0]["usd_reserved"].as_f64(), Some(0.0), "{:?}", seen[0]);
    assert!(
        (spent - served).abs() < 1e-6,
        "books match the upstream: {spent} vs {served}"
    );
    assert!(spent <= BUDGET_USD + 1e-9, "never over the budget: {spent}");
    let one_turn = (200.0 + f64::from(MAX_TOKENS)) * PRICE_PER_MTOK / 1e6;
    assert!(spent > BUDGET_USD - one_turn, "and used up: {spent}");
    assert!(ok >= 5, "{ok} turns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_hold_cluster_wide_and_a_killed_node_gives_its_slots_back() {
    let reply = Behavior::tokens(100, Duration::from_millis(50));
    let (mut nodes, mock, _redis, _dir) =
        nodes(reply, "concurrent_turns = 2, usd_per_day = 1000.0").await;
    let http = reqwest::Client::new();
    // Two long turns, on node 0 and node 1.
    let mut running = Vec::new();
    for (i, node) in nodes.iter().take(2).enumerate() {
        let (http, url) = (http.clone(), node.http(""));
        running.push(tokio::spawn(async move { ask(&http, &url, i).await.0 }));
    }
    // Both counted and both streaming (a turn reserves before it calls the upstream).
    let deadline = Instant::now() + Duration::from_secs(5);
    while usage(&http, &nodes[2]).await["concurrent_turns"] != 2 || mock.requests().len() < 2 {
        assert!(Instant::now() < deadline, "both turns counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = usage(&http, &nodes[2]).await;
    let one_reservation = u["usd_reserved"].as_f64().unwrap() / 2.0;
    assert!(one_reservation > 0.0, "{u}");
    // A third, on node 2: refused, the cluster holds two.
    let (status, retry, body) = ask(&http, &nodes[2].http(""), 2).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent_turns"),
        "{body}"
    );
    assert!(retry.is_some());
    // Node 0 dies holding a slot and a reservation: both come back within the lease.
    nodes[0].kill();
    let killed = Instant::now();
    loop {
        let u = usage(&http, &nodes[2]).await;
        let reserved = u["usd_reserved"].as_f64().unwrap();
        if u["concurrent_turns"] == 1 && (reserved - one_reservation).abs() < 1e-9 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(LEASE_MS + 700),
            "still held {:?} after the kill: {u}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "node 0's slot and reservation came back {:?} after the kill",
        killed.elapsed()
    );
    let (status, _, body) = ask(&http, &nodes[2].http(""), 3).await;
    assert_eq!(status, 200, "a new turn is admitted: {body}");
    assert_eq!(
        running.pop().unwrap().await.unwrap(),
        200,
        "node 1's turn finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_per_minute_count_on_every_node_together() {
    let (nodes, _mock, _redis, _dir) = nodes(Behavior::text(&["ok"]), "requests_per_min = 6").await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = http
            .get(nodes[i % 3].http("/v1/usage"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        statuses.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
    }
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    assert_eq!(ok, 6, "six a minute for the whole cluster: {statuses:?}");
    assert!(
        statuses[6..].iter().all(|s| *s == (429, true)),
        "{statuses:?}"
    );
}
