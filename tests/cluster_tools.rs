//! Cluster mode: a tool's `max_concurrency` holds across nodes. Two `confab` processes
//! share one `redis-server` and one MCP tool server (PyPI `mcp` SDK); each runs a turn that
//! calls the same slow tool at once, and with one slot the calls run one after the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Client;
use common::cluster::{Node, Redis, node_config};
use common::mcp::http_tools;
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

async fn member(node: &Node, room: &str) -> Client {
    let mut c = Client::connect(&node.ws_url()).await;
    c.join(room, "ann").await;
    c
}

/// The `ok` tool event of a turn's events.
fn finished(evs: &[Value]) -> Value {
    evs.iter()
        .find(|e| e["type"] == "tool" && e["status"] == "ok")
        .cloned()
        .unwrap_or_else(|| panic!("no finished tool call in {evs:?}"))
}

#[tokio::test]
async fn one_slot_of_a_tool_is_shared_by_every_node() {
    let redis = Redis::start().await;
    let tools = http_tools().await;
    let mock = MockUpstream::start(0, Behavior::text(&["ok"]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(dir.path(), &mock.base_url(), &redis.url(), 2_000);
    let env = [
        ("CONFAB__MCP__SERVERS__WEATHER__URL", tools.url.as_str()),
        ("CONFAB__MCP__SERVERS__WEATHER__MAX_CONCURRENCY", "1"),
    ];
    let a = Node::start_with("node0", &config, &env).await;
    let b = Node::start_with("node1", &config, &env).await;
    let mut on_a = member(&a, "r1").await;
    let mut on_b = member(&b, "r2").await;
    for _ in 0..2 {
        mock.push(Behavior::calls(&[("slow", r#"{"seconds": 0.6}"#)]));
    }
    on_a.send(json!({"type": "prompt", "text": "wait"})).await;
    on_b.send(json!({"type": "prompt", "text": "wait"})).await;
    let (ra, rb) = tokio::join!(on_a.until_end(), on_b.until_end());
    let took: Vec<u64> = [&ra, &rb]
        .iter()
        .map(|evs| finished(evs)["duration_ms"].as_u64().unwrap())
        .collect();
    assert!(
        took.iter().max().unwrap() >= &1_100,
        "the second call waited for the first one's slot: {took:?}"
    );
    mock.push(Behavior::calls(&[("peak", "{}")]));
    on_b.send(json!({"type": "prompt", "text": "peak?"})).await;
    let seen = on_b.until_end().await;
    assert_eq!(finished(&seen)["output"], "1", "never two calls at once");
    // Both nodes ran one of the slow calls (each room's turn runs where its member is).
    let logs: Vec<String> = [&a, &b].iter().map(|n| n.log_text()).collect();
    assert!(
        logs.iter().all(|l| l.contains("tool call")),
        "each node ran a call: {:?}",
        logs.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
}
