//! Upstream health in /readyz: a provider that cannot be reached is reported (with why) while
//! the chain falls back past it and the server stays ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, answer, provider};
use confab::config::ChainConfig;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

#[tokio::test]
async fn an_unreachable_upstream_is_reported_and_skipped() {
    let srv = TestServer::start_with(Behavior::text(&["fine"]), |c| {
        // A closed port: nothing listens on the discard port of loopback here.
        c.providers.insert(
            "gone".into(),
            provider("http://127.0.0.1:9/v1", "local-llm"),
        );
        c.chains.insert(
            "default".into(),
            ChainConfig {
                links: vec!["gone".into(), "mock".into()],
                ..ChainConfig::default()
            },
        );
    })
    .await;
    let t0 = Instant::now();
    let ready: Value = loop {
        let v: Value = reqwest::get(srv.http("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["upstreams"]["gone"].is_object() && v["upstreams"]["mock"].is_object() {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["upstreams"]["mock"]["ok"], true, "{ready}");
    assert_eq!(ready["upstreams"]["gone"]["ok"], false, "{ready}");
    let detail = ready["upstreams"]["gone"]["detail"].as_str().unwrap();
    assert!(detail.contains("127.0.0.1:9/v1/models"), "{detail}");
    assert_eq!(ready["upstreams"]["gone"]["breaker"], "closed");

    let mut c = srv.joined("r", "ann").await;
    c.send(json!({"type": "prompt", "text": "hello?"})).await;
    let ev = c.until_end().await;
    assert_eq!(answer(&ev), "fine");
    let metrics = ev.iter().find(|e| e["type"] == "metrics").unwrap();
    assert_eq!(metrics["attempts"][0]["provider"], "gone");
    assert_eq!(metrics["provider"], "mock");
}
