//! The answer cache end to end, with the real embedding model for the semantic layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer, answer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(
        Behavior::text(&["Larkspur ", "replays ", "its WAL [1]."]),
        move |c| {
            with_retrieval(c, &p);
            let m = c.providers.get_mut("mock").unwrap();
            m.price_input_per_mtok = 1.0;
            m.price_output_per_mtok = 4.0;
        },
    )
    .await;
    let doc = json!({"title": "Larkspur internals", "text": "After a crash, Larkspur replays its write-ahead log from the last checkpoint."});
    let r = reqwest::Client::new()
        .post(srv.http("/v1/documents?wait=true"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    (srv, dir)
}

async fn ask(c: &mut Client, prompt: Value) -> (Vec<Value>, Duration) {
    let t0 = Instant::now();
    c.send(prompt).await;
    let ev = c.until_end().await;
    (ev, t0.elapsed())
}

fn q(text: &str) -> Value {
    json!({"type": "prompt", "text": text})
}

fn find<'a>(ev: &'a [Value], ty: &str) -> &'a Value {
    ev.iter()
        .find(|e| e["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {ev:?}"))
}

#[tokio::test]
async fn identical_prompt_hits_exactly_and_replays_as_a_turn() {
    let (srv, _dir) = server().await;
    let mut a = srv.joined("r1", "alice").await;
    let (first, _) = ask(&mut a, q("How does Larkspur recover after a crash?")).await;
    assert!(find(&first, "start")["cached"].is_null());
    let cost = find(&first, "metrics")["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);
    assert_eq!(srv.mock.requests().len(), 1);

    // Another fresh room: same tenant, corpus and (empty) conversation.
    let mut b = srv.joined("r2", "bob").await;
    let (hit, took) = ask(&mut b, q("how does Larkspur recover after a crash")).await;
    assert_eq!(
        srv.mock.requests().len(),
        1,
        "served without calling the model"
    );
    let start = find(&hit, "start");
    assert_eq!(start["cached"]["layer"], "exact");
    assert_eq!(start["cached"]["similarity"], 1.0);
    assert_eq!(answer(&hit), answer(&first));
    assert_eq!(
        find(&hit, "tool")["output"],
        find(&first, "tool")["output"],
        "original citations"
    );
    let m = find(&hit, "metrics");
    assert_eq!(m["cached"], true);
    assert_eq!(m["cost_usd"], 0.0);
    assert_eq!(m["saved_usd"].as_f64().unwrap(), cost);
    assert_eq!(m["citations"], json!([1]));
    assert_eq!(hit.last().unwrap()["finish_reason"], "stop");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn paraphrase_hits_the_semantic_layer() {
    let (srv, _dir) = server().await;
    let mut a = srv.joined("r1", "alice").await;
    ask(&mut a, q("How does Larkspur recover after a crash?")).await;
    let mut b = srv.joined("r2", "bob").await;
    let (hit, _) = ask(&mut b, q("How does Larkspur recover after crashing?")).await;
    let cached = &find(&hit, "start")["cached"];
    assert_eq!(cached["layer"], "semantic", "{hit:?}");
    assert!(cached["similarity"].as_f64().unwrap() >= 0.92);
    assert_eq!(srv.mock.requests().len(), 1);
    // A different question is not a hit.
    let mut c = srv.joined("r3", "carol").await;
    let (miss, _) = ask(&mut c, q("How often do Larkspur checkpoints run?")).await;
    assert!(find(&miss, "start")["cached"].is_null());
    assert_eq!(srv.mock.requests().len(), 2);
}

#[tokio::test]
async fn other_conversation_state_upload_error_and_opt_out_all_miss() {
    let (srv, _dir) = server().await;
    let question = "How does Larkspur recover after a crash?";
    let mut a = srv.joined("r1", "alice").await;
    ask(&mut a, q(question)).await;
    let mut calls = 1;

    // Another room whose conversation already has a turn: a different context, so a miss.
    let mut b = srv.joined("r2", "bob").await;
    ask(&mut b, q("Hello there")).await;
    calls += 1;
    let (ev, _) = ask(&mut b, q(question)).await;
    calls += 1;
    assert!(
        find(&ev, "start")["cached"].is_null(),
        "conversation state differs"
    );
    assert_eq!(srv.mock.requests().len(), calls);

    // An upload bumps the corpus version: older entries are unreachable at once.
    let doc = json!({"title": "More", "text": "Larkspur also keeps a second copy of the log on another disk."});
    reqwest::Client::new()
        .post(srv.http("/v1/documents?wait=true"))
        .json(&doc)
        .send()
        .await
        .unwrap();
    let mut c = srv.joined("r3", "carol").await;
    let (ev, _) = ask(&mut c, q(question)).await;
    calls += 1;
    assert!(find(&ev, "start")["cached"].is_null(), "stale after upload");
    assert_eq!(srv.mock.requests().len(), calls);

    // An errored turn is never stored.
    srv.mock.push(Behavior::Cut {
        tokens: vec!["half".into()],
        gap: Duration::ZERO,
    });
    let mut d = srv.joined("r4", "dan").await;
    let (ev, _) = ask(&mut d, q("What is in the second copy?")).await;
    calls += 1;
    assert_eq!(ev.last().unwrap()["finish_reason"], "error");
    let mut e = srv.joined("r5", "eve").await;
    let (ev, _) = ask(&mut e, q("What is in the second copy?")).await;
    calls += 1;
    assert!(
        find(&ev, "start")["cached"].is_null(),
        "errored turn was not cached"
    );
    assert_eq!(srv.mock.requests().len(), calls);

    // Opting out neither reads nor writes.
    let mut f = srv.joined("r6", "fay").await;
    let (ev, _) = ask(
        &mut f,
        json!({"type": "prompt", "text": "Opt out please", "cache": false}),
    )
    .await;
    calls += 1;
    assert!(find(&ev, "start")["cached"].is_null());
    let mut g = srv.joined("r7", "gus").await;
    let (ev, _) = ask(&mut g, q("Opt out please")).await;
    calls += 1;
    assert!(
        find(&ev, "start")["cached"].is_null(),
        "opted-out answer was not stored"
    );
    assert_eq!(srv.mock.requests().len(), calls);
    let mut h = srv.joined("r8", "hal").await;
    let (ev, _) = ask(
        &mut h,
        json!({"type": "prompt", "text": "Opt out please", "cache": false}),
    )
    .await;
    calls += 1;
    assert!(
        find(&ev, "start")["cached"].is_null(),
        "opt-out skips a stored answer too"
    );
    assert_eq!(srv.mock.requests().len(), calls);
}

async fn openai(srv: &TestServer, model: &str, prompt: &str) -> Value {
    let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    let r = reqwest::Client::new()
        .post(srv.http("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn grounded_and_ungrounded_answers_are_never_served_for_each_other() {
    let (srv, _dir) = server().await;
    let question = "How does Larkspur recover after a crash?";
    // The RAG alias retrieves; the chain's own name (a plain gateway call) does not, on the
    // same chain: neither may answer from the other's cache entry.
    let grounded = openai(&srv, "confab-rag", question).await;
    assert_eq!(grounded["confab"]["cached"], false);
    let plain = openai(&srv, "default", question).await;
    assert_eq!(plain["confab"]["cached"], false, "{plain}");
    assert!(plain["confab"]["sources"].as_array().unwrap().is_empty());
    // Each is a hit for its own kind.
    assert_eq!(
        openai(&srv, "default", question).await["confab"]["cached"],
        true
    );
    assert_eq!(
        openai(&srv, "confab-rag", question).await["confab"]["cached"],
        true
    );
    assert_eq!(srv.mock.requests().len(), 2);
}
