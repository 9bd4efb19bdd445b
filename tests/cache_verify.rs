//! The semantic layer never serves the answer to a different question: each pair below is
//! asked one after the other in fresh rooms of one tenant (and as fresh OpenAI requests),
//! as the users did. Pairs that ask something else must reach the model; pairs
//! that reword the same question must be served from the cache. Real embedding model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

/// Same words, another question (negation, order, numbers, polarity, roles, entity).
const DIFFERENT: &[(&str, &str)] = &[
    (
        "Is single sign-on enabled for the admin console?",
        "Is single sign-on disabled for the admin console?",
    ),
    (
        "How do I convert Celsius to Fahrenheit?",
        "How do I convert Fahrenheit to Celsius?",
    ),
    (
        "Can I get a refund within 30 days of purchase?",
        "Can I get a refund within 3 days of purchase?",
    ),
    (
        "Is the export API rate limited?",
        "Is the export API not rate limited?",
    ),
    (
        "Who reports to Maria Lopez?",
        "Whom does Maria Lopez report to?",
    ),
    (
        "What is the capital of Australia?",
        "What is the capital of Austria?",
    ),
];

/// The same question reworded (inflection, function words, a moved phrase).
const SAME: &[(&str, &str)] = &[
    (
        "How does Larkspur recover after a crash?",
        "How does Larkspur recover after crashing?",
    ),
    (
        "How do I enable single sign-on in the admin console?",
        "In the admin console, how do I enable single sign-on?",
    ),
    (
        "How do I rotate the API keys of a tenant?",
        "How can I rotate the API keys of a tenant?",
    ),
];

async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["an answer"]), move |c| {
        with_retrieval(c, &p);
    })
    .await;
    (srv, dir)
}

/// Asks `text` in a fresh room; whether the cache answered.
async fn in_room(srv: &TestServer, room: &str, text: &str) -> bool {
    let mut c = srv.joined(room, "ann").await;
    c.send(json!({"type": "prompt", "text": text})).await;
    let events = c.until_end().await;
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    !start["cached"].is_null()
}

/// Asks `text` as a fresh OpenAI request (RAG alias); whether the cache answered.
async fn over_openai(srv: &TestServer, text: &str) -> bool {
    let body = json!({"model": "confab-rag", "messages": [{"role": "user", "content": text}]});
    let resp = srv.chat_completion(&body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["confab"]["cached"].as_bool().unwrap()
}

async fn rejections(srv: &TestServer) -> f64 {
    common::scraped(&srv.http(""), "confab_cache_rejections_total").await
}

#[tokio::test]
async fn different_questions_miss_and_rewordings_hit_in_rooms() {
    let (srv, _dir) = server().await;
    for (i, (first, second)) in DIFFERENT.iter().enumerate() {
        assert!(!in_room(&srv, &format!("d{i}a"), first).await);
        let calls = srv.mock.requests().len();
        assert!(
            !in_room(&srv, &format!("d{i}b"), second).await,
            "served {first:?} for {second:?}"
        );
        assert_eq!(
            srv.mock.requests().len(),
            calls + 1,
            "{second:?} reached the model"
        );
    }
    assert!(
        rejections(&srv).await >= 3.0,
        "near matches turned down are counted"
    );
    for (i, (first, second)) in SAME.iter().enumerate() {
        assert!(!in_room(&srv, &format!("s{i}a"), first).await);
        assert!(
            in_room(&srv, &format!("s{i}b"), second).await,
            "{second:?} should reuse {first:?}"
        );
    }
}

#[tokio::test]
async fn different_questions_miss_and_rewordings_hit_over_openai() {
    let (srv, _dir) = server().await;
    for (first, second) in DIFFERENT {
        assert!(!over_openai(&srv, first).await);
        assert!(
            !over_openai(&srv, second).await,
            "served {first:?} for {second:?}"
        );
    }
    for (first, second) in SAME {
        assert!(!over_openai(&srv, first).await);
        assert!(
            over_openai(&srv, second).await,
            "{second:?} should reuse {first:?}"
        );
    }
}

#[tokio::test]
async fn a_tenant_with_the_semantic_layer_off_gets_exact_repeats_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["an answer"]), move |c| {
        with_retrieval(c, &p);
        c.cache.semantic = confab::config::SemanticMode::Off;
    })
    .await;
    let (first, second) = SAME[0];
    assert!(!in_room(&srv, "a", first).await);
    assert!(
        !in_room(&srv, "b", second).await,
        "no semantic hit when off"
    );
    assert!(
        in_room(&srv, "c", first).await,
        "an exact repeat still hits"
    );
}
