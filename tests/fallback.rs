//! Model fallback chains against scripted upstreams on loopback: one test per failure case.
//! Every turn must end with exactly one `end`; none may hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, answer, chain, provider, types};
use confab::config::{ProviderKind, Quality, RouteRule};
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A server with links `a` (the test's main mock) and `b` (a second mock), chain [a, b].
async fn two_links(a_retries: u32) -> (TestServer, MockUpstream) {
    let b = MockUpstream::start(0, Behavior::text(&["from ", "b"]))
        .await
        .unwrap();
    let b_url = b.base_url();
    let srv = TestServer::start_with(Behavior::text(&["from ", "a"]), move |c| {
        let mut a = c.providers.remove("mock").unwrap();
        a.max_retries = a_retries;
        a.first_token_timeout_ms = 300;
        c.providers.insert("a".into(), a);
        c.providers.insert("b".into(), provider(&b_url, "model-b"));
        chain(c, &["a", "b"]);
    })
    .await;
    (srv, b)
}

/// Sends a prompt and returns (events through `end`, wall time to the first delta).
async fn turn(c: &mut common::Client, text: &str) -> (Vec<Value>, Option<Duration>) {
    let t0 = Instant::now();
    c.send(json!({"type": "prompt", "text": text})).await;
    let mut events = Vec::new();
    let mut first = None;
    loop {
        let ev = c.recv().await;
        if ev["type"] == "delta" && first.is_none() {
            first = Some(t0.elapsed());
        }
        let end = ev["type"] == "end";
        events.push(ev);
        if end {
            break;
        }
    }
    assert_eq!(events.iter().filter(|e| e["type"] == "end").count(), 1);
    (events, first)
}

fn metrics(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["type"] == "metrics")
        .expect("metrics event")
}

fn outcomes(events: &[Value]) -> Vec<String> {
    metrics(events)["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}:{}",
                a["provider"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

fn report(case: &str, events: &[Value], first: Option<Duration>) {
    println!(
        "CASE | {case} | {} | attempts {:?} | first delta {}",
        types(events).join(" "),
        outcomes(events),
        first
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("-".into())
    );
}

#[tokio::test]
async fn server_error_then_success_is_retried_on_the_same_link() {
    let (srv, b) = two_links(2).await;
    srv.mock.push(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "q").await;
    report("500 then 200", &ev, first);
    assert_eq!(answer(&ev), "from a");
    assert_eq!(outcomes(&ev), ["a:error", "a:ok"]);
    assert_eq!(metrics(&ev)["attempts"][0]["status"], 500);
    assert!(
        !types(&ev).contains(&"error".to_string()),
        "a recovered retry is not an error"
    );
    assert_eq!(b.requests().len(), 0);
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let (srv, _b) = two_links(1).await;
    srv.mock.push(Behavior::Status {
        code: 429,
        retry_after: Some(1),
    });
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "q").await;
    report("429 Retry-After: 1", &ev, first);
    assert_eq!(outcomes(&ev), ["a:error", "a:ok"]);
    assert_eq!(metrics(&ev)["attempts"][0]["status"], 429);
    assert!(first.unwrap() >= ms(1_000), "waited Retry-After: {first:?}");
    assert!(first.unwrap() < ms(3_000));
}

#[tokio::test]
async fn hang_before_first_token_times_out_and_falls_back() {
    let (srv, b) = two_links(2).await;
    srv.mock.push(Behavior::Hang);
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "q").await;
    report("hang before first token", &ev, first);
    assert_eq!(answer(&ev), "from b");
    assert_eq!(
        outcomes(&ev),
        ["a:timeout", "b:ok"],
        "a TTFT timeout is not retried"
    );
    assert_eq!(metrics(&ev)["model"], "model-b");
    assert!(first.unwrap() >= ms(300));
    assert_eq!(b.requests().len(), 1);
}

#[tokio::test]
async fn cut_mid_stream_is_an_error_without_fallback() {
    let (srv, b) = two_links(2).await;
    srv.mock.push(Behavior::Cut {
        tokens: vec!["par".into(), "tial".into()],
        gap: ms(0),
    });
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "q").await;
    report("cut mid-stream", &ev, first);
    assert_eq!(answer(&ev), "partial");
    let err = ev.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["code"], "upstream_cut");
    assert_eq!(ev.last().unwrap()["finish_reason"], "error");
    assert_eq!(ev.last().unwrap()["partial"], true);
    assert_eq!(outcomes(&ev), ["a:error"]);
    assert_eq!(
        b.requests().len(),
        0,
        "no silent switch after the first token"
    );
    assert_eq!(srv.mock.requests().len(), 1, "and no retry");
}

#[tokio::test]
async fn malformed_chunk_before_first_token_falls_back_after_it_fails() {
    let (srv, _b) = two_links(2).await;
    srv.mock.push(Behavior::Malformed { tokens: vec![] });
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "q").await;
    report("malformed chunk before first token", &ev, first);
    assert_eq!(answer(&ev), "from b");
    assert_eq!(outcomes(&ev), ["a:error", "b:ok"]);

    srv.mock.push(Behavior::Malformed {
        tokens: vec!["ok ".into()],
    });
    let (ev, first) = turn(&mut c, "q2").await;
    report("malformed chunk after first token", &ev, first);
    assert_eq!(answer(&ev), "ok ");
    let err = ev.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["code"], "upstream_protocol");
    assert_eq!(ev.last().unwrap()["finish_reason"], "error");
}

#[tokio::test]
async fn every_link_down_gives_the_extractive_answer() {
    // Nothing listens on these ports: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let srv = TestServer::start_with(Behavior::text(&["unused"]), move |c| {
        c.providers
            .insert("a".into(), provider(&dead_url, "model-a"));
        c.providers
            .insert("b".into(), provider(&dead_url, "model-b"));
        chain(c, &["a", "b"]);
    })
    .await;
    let mut c = srv.joined("r", "u").await;
    let (ev, first) = turn(&mut c, "what do the documents say?").await;
    report("every link down", &ev, first);
    assert_eq!(outcomes(&ev), ["a:error", "b:error", "extractive:ok"]);
    assert_eq!(metrics(&ev)["model"], "extractive");
    assert_eq!(ev.last().unwrap()["finish_reason"], "stop");
    assert!(answer(&ev).contains("no documents"), "{}", answer(&ev));
}

#[tokio::test]
async fn no_model_configured_answers_extractively() {
    let srv = TestServer::start_with(Behavior::text(&["unused"]), |c| {
        c.providers.clear();
        c.chains = confab::Config::default().chains;
    })
    .await;
    let mut c = srv.joined("r", "u").await;
    let (ev, _) = turn(&mut c, "hello?").await;
    let start = ev.iter().find(|e| e["type"] == "start").unwrap();
    assert_eq!(start["model"], "extractive");
    assert_eq!(metrics(&ev)["model"], "extractive");
    assert_eq!(metrics(&ev)["cost_usd"], 0.0);
    assert_eq!(srv.mock.requests().len(), 0);
}

#[tokio::test]
async fn a_turn_that_consumed_nothing_costs_nothing() {
    // A priced link that never produced a token: cancelled while waiting for it.
    let srv = TestServer::start_with(Behavior::Hang, |c| {
        let m = c.providers.get_mut("mock").unwrap();
        m.price_input_per_mtok = 5.0;
        m.price_output_per_mtok = 15.0;
    })
    .await;
    let mut c = srv.joined("r", "u").await;
    c.send(json!({"type": "prompt", "text": "this will hang"}))
        .await;
    let start = c.until_type("start").await;
    let turn_id = start.last().unwrap()["turn_id"].clone();
    c.send(json!({"type": "cancel", "turn_id": turn_id})).await;
    let ev = c.until_end().await;
    assert_eq!(ev.last().unwrap()["finish_reason"], "cancelled");
    assert_eq!(outcomes(&ev), ["mock:cancelled"]);
    assert_eq!(metrics(&ev)["provider"], "mock");
    assert_eq!(
        metrics(&ev)["cost_usd"],
        0.0,
        "nothing was generated, nothing is billed"
    );
}

#[tokio::test]
async fn breaker_opens_after_failures_and_skips_the_link() {
    let b = MockUpstream::start(0, Behavior::text(&["b"]))
        .await
        .unwrap();
    let b_url = b.base_url();
    let srv = TestServer::start_with(
        Behavior::Status {
            code: 503,
            retry_after: None,
        },
        move |c| {
            let mut a = c.providers.remove("mock").unwrap();
            a.breaker_min_requests = 3;
            a.breaker_error_ratio = 0.5;
            a.breaker_cooldown_ms = 400;
            c.providers.insert("a".into(), a);
            c.providers.insert("b".into(), provider(&b_url, "model-b"));
            chain(c, &["a", "b"]);
        },
    )
    .await;
    let mut c = srv.joined("r", "u").await;
    for _ in 0..3 {
        let (ev, _) = turn(&mut c, "q").await;
        assert_eq!(outcomes(&ev), ["a:error", "b:ok"]);
    }
    let (ev, first) = turn(&mut c, "q").await;
    report("breaker open", &ev, first);
    assert_eq!(outcomes(&ev), ["a:circuit_open", "b:ok"]);
    assert_eq!(srv.mock.requests().len(), 3, "an open link gets no traffic");
    // After the cooldown one probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(ms(450)).await;
    srv.mock.set_default(Behavior::text(&["a is back"]));
    let (ev, _) = turn(&mut c, "q").await;
    assert_eq!(outcomes(&ev), ["a:ok"]);
    let (ev, _) = turn(&mut c, "q").await;
    assert_eq!(outcomes(&ev), ["a:ok"]);
}

#[tokio::test]
async fn cheap_first_routing_and_escalation() {
    let strong = MockUpstream::start(0, Behavior::text(&["strong ", "answer"]))
        .await
        .unwrap();
    let strong_url = strong.base_url();
    let srv = TestServer::start_with(Behavior::text(&["cheap ", "answer"]), move |c| {
        let mut cheap = c.providers.remove("mock").unwrap();
        cheap.price_input_per_mtok = 0.15;
        cheap.price_output_per_mtok = 0.6;
        c.providers.insert("cheap".into(), cheap);
        let mut s = provider(&strong_url, "strong-model");
        s.price_input_per_mtok = 3.0;
        s.price_output_per_mtok = 15.0;
        c.providers.insert("strong".into(), s);
        chain(c, &["cheap", "strong"]);
        c.chains.get_mut("default").unwrap().escalate_on_refusal = true;
        c.routing.rules = vec![
            RouteRule {
                quality: Some(Quality::Best),
                start: "strong".into(),
                ..RouteRule::default()
            },
            RouteRule {
                min_prompt_tokens: Some(1_500),
                start: "strong".into(),
                ..RouteRule::default()
            },
        ];
    })
    .await;
    let mut c = srv.joined("r", "u").await;

    let (ev, _) = turn(&mut c, "easy one").await;
    assert_eq!(outcomes(&ev), ["cheap:ok"], "cheap first by default");
    let m = metrics(&ev);
    let expected = (10.0 * 0.15 + 2.0 * 0.6) / 1e6;
    assert!(
        (m["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{m}"
    );

    c.send(json!({"type": "prompt", "text": "hard one", "quality": "best"}))
        .await;
    let ev = c.until_end().await;
    assert_eq!(
        outcomes(&ev),
        ["strong:ok"],
        "quality hint routes to the strong link"
    );
    assert_eq!(
        ev.iter().find(|e| e["type"] == "start").unwrap()["model"],
        "strong-model"
    );

    srv.mock.push(Behavior::Reply {
        tokens: vec![],
        ttft: ms(0),
        gap: ms(0),
    });
    let (ev, _) = turn(&mut c, "empty please").await;
    assert_eq!(outcomes(&ev), ["cheap:empty", "strong:ok"]);

    srv.mock.push(Behavior::text(&[
        "I'm sorry, ",
        "but I can't ",
        "help with that request at all.",
    ]));
    let (ev, first) = turn(&mut c, "refuse please").await;
    report("cheap link refuses", &ev, first);
    assert_eq!(outcomes(&ev), ["cheap:refused", "strong:ok"]);
    assert_eq!(
        answer(&ev),
        "strong answer",
        "the refusal never reached clients"
    );

    // Routing counts the whole request, history included: from here on it is long.
    let (ev, _) = turn(&mut c, &"long context ".repeat(550)).await;
    assert_eq!(outcomes(&ev), ["strong:ok"], "long prompts start strong");
}

#[tokio::test]
async fn anthropic_messages_stream() {
    let srv = TestServer::start_with(Behavior::text(&["Bonjour", " !"]), |c| {
        let a = c.providers.get_mut("mock").unwrap();
        a.kind = ProviderKind::Anthropic;
        a.api_key = confab::config::Secret::new("sk-ant-test");
    })
    .await;
    let mut c = srv.joined("r", "u").await;
    let (ev, _) = turn(&mut c, "salut").await;
    assert_eq!(answer(&ev), "Bonjour !");
    let m = metrics(&ev);
    assert_eq!(m["tokens_in"], 10);
    assert_eq!(m["tokens_out"], 2);
    assert_eq!(m["usage_reported"], true);
    let req = &srv.mock.requests()[0];
    assert_eq!(req["stream"], true);
    assert!(req["system"].as_str().unwrap().contains("assistant"));
    assert_eq!(req["messages"][0]["role"], "user");
    assert_eq!(req["messages"][0]["content"], "u: salut");
}
