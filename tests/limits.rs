//! Per-tenant and per-user limits over the real server: a USD budget under 100 concurrent
//! turns, requests per minute (429 + Retry-After), WebSocket connections, and concurrent
//! turns (a `rate_limited` event with `retry_after_ms`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, TestServer, tenant};
use confab::config::LimitSet;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

/// $0.01 per token in and out: a turn's worst case is a few dollars, its real cost cents.
const PRICE_PER_MTOK: f64 = 10_000.0;
const MAX_TOKENS: u32 = 100;
const BUDGET_USD: f64 = 5.0;
const TOKENS_PER_TURN: usize = 20;

/// One turn through the OpenAI endpoint at `base`: status, Retry-After, body.
async fn ask(http: &reqwest::Client, base: &str, key: &str, i: usize) -> (u16, Option<u64>, Value) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": format!("question {i}")}]}))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let status = r.status().as_u16();
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// 100 turns at once against a budget worth a handful: each reserves its worst case before
/// the upstream call, so the settled total never passes the budget by more than one turn's
/// estimate (here: not at all). Clients retry until the refusal says "until midnight".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_do_not_overshoot_the_daily_budget() {
    let srv = TestServer::start_with(
        Behavior::tokens(TOKENS_PER_TURN, Duration::from_millis(2)),
        |c| {
            tenant(c, "acme", &[("ann", "acme-key")]);
            c.auth.tenants.get_mut("acme").unwrap().limits = LimitSet {
                usd_per_day: Some(BUDGET_USD),
                ..LimitSet::default()
            };
            let p = c.providers.get_mut("mock").unwrap();
            p.price_input_per_mtok = PRICE_PER_MTOK;
            p.price_output_per_mtok = PRICE_PER_MTOK;
            p.max_tokens = MAX_TOKENS;
            c.cache.enabled = false;
        },
    )
    .await;
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (http, base) = (http.clone(), srv.http(""));
            tokio::spawn(async move {
                let (mut ok, mut refused, mut hinted) = (0u32, 0u32, 0u32);
                loop {
                    let (status, retry, body) = ask(&http, &base, "acme-key", i).await;
                    match status {
                        200 => ok += 1,
                        429 => {
                            refused += 1;
                            hinted += u32::from(retry.is_some());
                            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                            // Spent until midnight: stop. Otherwise turns are still settling.
                            if retry.unwrap_or(0) > 60 {
                                return (ok, refused, hinted);
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        s => panic!("unexpected status {s}"),
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut refused, mut hinted) = (0, 0, 0);
    for t in tasks {
        let (o, r, h) = t.await.unwrap();
        (ok, refused, hinted) = (ok + o, refused + r, hinted + h);
    }
    let usage: Value = http
        .get(srv.http("/v1/usage"))
        .bearer_auth("acme-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spent = usage["usd_today"].as_f64().unwrap();
    // What the upstream really served, priced independently of the server's books.
    let served = srv.mock.completed() as f64 * (10 + TOKENS_PER_TURN) as f64 * PRICE_PER_MTOK / 1e6;
    let prompt_est = 200.0; // generous: a one-line question plus the system prompt
    let one_turn = (prompt_est + f64::from(MAX_TOKENS)) * PRICE_PER_MTOK / 1e6;
    println!(
        "budget: {BUDGET_USD} USD, spent {spent:.2} USD (upstream served {served:.2}) in {ok} turns; \
         {refused} refusals (all with Retry-After: {}); overshoot {:.2} USD",
        hinted == refused,
        (spent - BUDGET_USD).max(0.0)
    );
    assert!(
        (spent - served).abs() < 1e-6,
        "books match the upstream: {spent} vs {served}"
    );
    assert!(spent <= BUDGET_USD + one_turn, "overshoot: spent {spent}");
    assert!(
        spent <= BUDGET_USD + 1e-9,
        "reserve-then-settle allows no overshoot: {spent}"
    );
    assert!(
        ok >= 5,
        "the budget was used, not refused outright: {ok} turns"
    );
    assert!(spent > BUDGET_USD - one_turn, "and used up: {spent}");
    assert_eq!(hinted, refused, "every 429 carries Retry-After");
    assert_eq!(usage["usd_reserved"].as_f64(), Some(0.0), "{usage}");
}

#[tokio::test]
async fn request_connection_and_turn_limits_answer_with_retry_hints() {
    let srv = TestServer::start_with(Behavior::tokens(30, Duration::from_millis(20)), |c| {
        tenant(c, "acme", &[("ann", "ann-key"), ("bob", "bob-key")]);
        let t = c.auth.tenants.get_mut("acme").unwrap();
        t.user_limits = LimitSet {
            requests_per_min: Some(8),
            ws_connections: Some(1),
            concurrent_turns: Some(1),
            ..LimitSet::default()
        };
    })
    .await;
    let http = reqwest::Client::new();
    // Requests per minute, per user: ann's ninth call is refused, bob is not affected.
    for i in 0..8 {
        let r = http
            .get(srv.http("/v1/models"))
            .bearer_auth("ann-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "call {i}");
    }
    let r = http
        .get(srv.http("/v1/models"))
        .bearer_auth("ann-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (status, _, _) = ask(&http, &srv.http(""), "bob-key", 0).await;
    assert_eq!(status, 200);

    // One WebSocket per user: bob's second upgrade is refused with 429.
    let url = srv.ws_url();
    let auth = [("authorization", "Bearer bob-key")];
    let mut c = Client::connect_with(&url, &auth).await.unwrap();
    assert_eq!(Client::connect_with(&url, &auth).await.err(), Some(429));

    // One turn at a time per user: the second prompt while the first streams is refused.
    c.join("r", "bob").await;
    c.send(json!({"type": "prompt", "text": "first"})).await;
    c.until_type("start").await;
    c.send(json!({"type": "prompt", "text": "second"})).await;
    let err = loop {
        let ev = c.recv().await;
        if ev["type"] == "error" {
            break ev;
        }
    };
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert!(err["retry_after_ms"].as_u64().is_some(), "{err}");
    c.until_end().await;
    // The slot is back once the turn ended.
    c.send(json!({"type": "prompt", "text": "third"})).await;
    let evs = c.until_end().await;
    assert!(evs.iter().all(|e| e["type"] != "error"), "{evs:?}");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        Client::connect_with(&url, &auth).await.is_ok(),
        "connection slot released"
    );
}
