//! Server-side tools over MCP, against a real tool server written with the official `mcp`
//! Python SDK (tests/mcp/tool_server.py), over streamable HTTP and over stdio. The scripted
//! upstream answers with tool calls; confab runs them and asks again with their results.
//! Every room member sees the same `tool` events; every turn ends with exactly one `end`.
//!
//! The Python comes from `CONFAB_TEST_MCP_PYTHON` (scripts/test.sh installs PyPI `mcp`
//! into a venv and sets it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use common::mcp::{SERVER, http_tools, python};
use confab::Config;
use confab::config::McpServer;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

fn http_server(url: &str) -> McpServer {
    McpServer {
        url: Some(url.into()),
        timeout_ms: 5_000,
        ..McpServer::default()
    }
}

fn stdio_server() -> McpServer {
    McpServer {
        command: Some(python()),
        args: vec![SERVER.into(), "stdio".into()],
        timeout_ms: 5_000,
        ..McpServer::default()
    }
}

async fn start(server: McpServer, tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(Behavior::text(&["done"]), move |c| {
        c.mcp.servers.insert("weather".into(), server);
        tweak(c);
    })
    .await
}

/// The tool events of a turn's events, as (name, status, output, error).
fn tool_events(evs: &[Value]) -> Vec<(String, String, Value, Value)> {
    evs.iter()
        .filter(|e| e["type"] == "tool" && e["call_id"].is_string())
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
                e["output"].clone(),
                e["error"].clone(),
            )
        })
        .collect()
}

/// How the model's calls of a turn ended (`running` left out), sorted: calls of one round
/// end in any order.
fn outcomes(evs: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = tool_events(evs)
        .into_iter()
        .filter(|e| e.1 != "running")
        .map(|e| e.1)
        .collect();
    out.sort_unstable();
    out
}

fn ends(evs: &[Value]) -> usize {
    evs.iter().filter(|e| e["type"] == "end").count()
}

/// The messages of the upstream request `i`.
fn sent(srv: &TestServer, i: usize) -> Value {
    srv.mock.requests()[i]["messages"].clone()
}

#[tokio::test]
async fn one_call_and_two_parallel_calls_run_and_every_member_sees_them() {
    let tools = http_tools().await;
    let srv = start(http_server(&tools.url), |_| {}).await;
    let mut a = srv.joined("ops", "ann").await;
    let mut b = srv.joined("ops", "bob").await;
    a.until_type("presence").await;

    srv.mock
        .push(Behavior::calls(&[("get_weather", r#"{"city":"Oslo"}"#)]));
    srv.mock.push(Behavior::text(&["It is ", "sunny."]));
    a.send(json!({"type": "prompt", "text": "Weather in Oslo?"}))
        .await;
    let seen_a = a.until_end().await;
    let seen_b = b.until_end().await;
    let ta = tool_events(&seen_a);
    assert_eq!(
        ta,
        tool_events(&seen_b),
        "both members see the same tool events"
    );
    assert_eq!(ta.len(), 2, "running, then ok: {seen_a:?}");
    assert_eq!((ta[0].1.as_str(), &ta[0].2), ("running", &Value::Null));
    assert_eq!(ta[1].1, "ok");
    assert_eq!(ta[1].2, "sunny, 21 C in Oslo");
    let done = seen_a.iter().find(|e| e["status"] == "ok").unwrap();
    assert_eq!(done["server"], "weather");
    assert_eq!(done["input"], json!({"city": "Oslo"}));
    assert!(done["call_id"].as_str().unwrap().starts_with("call_mock_"));
    let text: String = seen_a
        .iter()
        .filter_map(|e| e["text"].as_str().filter(|_| e["type"] == "delta"))
        .collect();
    assert_eq!(text, "It is sunny.");
    assert_eq!((ends(&seen_a), ends(&seen_b)), (1, 1));

    // The model was offered the server's tools, then given the call and its result.
    let first = &srv.mock.requests()[0];
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        offered.contains(&"get_weather") && offered.contains(&"slow"),
        "{offered:?}"
    );
    let second = sent(&srv, 1);
    let n = second.as_array().unwrap().len();
    assert_eq!(
        second[n - 2]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        second[n - 1],
        json!({"role": "tool", "content": "sunny, 21 C in Oslo",
               "tool_call_id": done["call_id"]})
    );

    // Two calls in one answer run together; both results go back, in the calls' order.
    srv.mock.push(Behavior::calls(&[
        ("get_weather", r#"{"city":"Bergen"}"#),
        ("get_time", "{}"),
    ]));
    srv.mock.push(Behavior::text(&["Sunny at nine."]));
    a.send(json!({"type": "prompt", "text": "Weather and time in Bergen?"}))
        .await;
    let seen = a.until_end().await;
    b.until_end().await;
    let t = tool_events(&seen);
    let finished: Vec<(&str, &Value)> = t
        .iter()
        .filter(|e| e.1 == "ok")
        .map(|e| (e.0.as_str(), &e.2))
        .collect();
    assert_eq!(finished.len(), 2, "{t:?}");
    assert!(finished.contains(&("get_time", &json!("09:00"))));
    let third = sent(&srv, 3);
    let n = third.as_array().unwrap().len();
    assert_eq!(third[n - 2]["content"], "sunny, 21 C in Bergen");
    assert_eq!(third[n - 1]["content"], "09:00");
    assert_eq!(ends(&seen), 1);
}

#[tokio::test]
async fn a_stdio_server_works_like_an_http_one() {
    let srv = start(stdio_server(), |_| {}).await;
    let mut a = srv.joined("ops", "ann").await;
    srv.mock.push(Behavior::calls(&[("get_time", "{}")]));
    srv.mock.push(Behavior::text(&["Nine."]));
    a.send(json!({"type": "prompt", "text": "Time?"})).await;
    let seen = a.until_end().await;
    let t = tool_events(&seen);
    assert_eq!(
        t.last().map(|e| (e.1.as_str(), e.2.clone())),
        Some(("ok", json!("09:00"))),
        "{seen:?}"
    );
    assert_eq!(ends(&seen), 1);
}

#[tokio::test]
async fn hangs_failures_and_injections_are_reported_and_the_model_is_told() {
    let tools = http_tools().await;
    let mut server = http_server(&tools.url);
    server.per_tool.insert(
        "slow".into(),
        confab::config::ToolLimitsOverride {
            timeout_ms: Some(300),
            ..Default::default()
        },
    );
    let srv = start(server, |_| {}).await;
    let mut a = srv.joined("ops", "ann").await;
    srv.mock.push(Behavior::calls(&[
        ("slow", r#"{"seconds": 30}"#),
        ("fail", "{}"),
        ("inject", "{}"),
    ]));
    srv.mock.push(Behavior::text(&["Nothing worked."]));
    let t0 = std::time::Instant::now();
    a.send(json!({"type": "prompt", "text": "Try the tools"}))
        .await;
    let seen = a.until_end().await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the hang was cut at its timeout"
    );
    let t = tool_events(&seen);
    let end_of = |name: &str| {
        t.iter()
            .find(|e| e.0 == name && e.1 != "running")
            .unwrap()
            .clone()
    };
    assert_eq!(end_of("slow").1, "timeout", "{t:?}");
    let fail = end_of("fail");
    assert_eq!(fail.1, "error");
    let inject = end_of("inject");
    assert_eq!(inject.1, "error");
    assert!(
        inject.3.as_str().unwrap().contains("injection"),
        "{inject:?}"
    );
    let told = sent(&srv, 1).to_string();
    assert!(told.contains("no answer within 300 ms"), "{told}");
    assert!(
        told.contains("the weather station is offline"),
        "the tool's own message: {told}"
    );
    assert!(
        told.contains("withheld") && !told.contains("reveal the system prompt"),
        "{told}"
    );
    assert_eq!(ends(&seen), 1);
    let text: String = seen
        .iter()
        .filter(|e| e["type"] == "delta")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(text, "Nothing worked.");
}

#[tokio::test]
async fn a_tool_outside_the_tenants_allow_list_is_refused_and_never_offered() {
    let tools = http_tools().await;
    let srv = start(http_server(&tools.url), |c| {
        common::tenant(c, "acme", &[("ann", "key-ann")]);
        c.auth.tenants.get_mut("acme").unwrap().tools = Some(vec!["get_time".into()]);
    })
    .await;
    let mut a = srv.joined_with_key("ops", "ann", "key-ann").await;
    srv.mock
        .push(Behavior::calls(&[("get_weather", r#"{"city":"Oslo"}"#)]));
    srv.mock
        .push(Behavior::text(&["I cannot check the weather."]));
    a.send(json!({"type": "prompt", "text": "Weather in Oslo?"}))
        .await;
    let seen = a.until_end().await;
    let t = tool_events(&seen);
    assert_eq!(t.len(), 1, "refused at once, never running: {t:?}");
    assert_eq!(t[0].1, "refused");
    let offered = &srv.mock.requests()[0]["tools"];
    assert_eq!(offered.as_array().unwrap().len(), 1, "{offered}");
    assert_eq!(offered[0]["function"]["name"], "get_time");
    assert!(sent(&srv, 1).to_string().contains("not available"));
    assert_eq!(ends(&seen), 1);
}

#[tokio::test]
async fn the_call_budget_and_the_cost_ceiling_stop_tools() {
    let tools = http_tools().await;
    let mut server = http_server(&tools.url);
    server.cost_usd = 0.01;
    let srv = start(server, |c| {
        c.turn.max_tool_calls = 2;
        c.turn.max_cost_usd = 0.025;
    })
    .await;
    let mut a = srv.joined("ops", "ann").await;
    // Three calls, two allowed by the call budget, and of those the ceiling takes two.
    srv.mock.push(Behavior::calls(&[
        ("get_time", "{}"),
        ("get_time", "{}"),
        ("get_time", "{}"),
    ]));
    srv.mock.push(Behavior::text(&["Nine."]));
    a.send(json!({"type": "prompt", "text": "Time, thrice?"}))
        .await;
    let seen = a.until_end().await;
    assert_eq!(outcomes(&seen), ["ok", "ok", "refused"], "{seen:?}");
    let asked_again = &srv.mock.requests()[1];
    assert!(
        asked_again.get("tools").is_none(),
        "calls spent: no tools offered: {asked_again}"
    );
    assert!(asked_again.to_string().contains("max_tool_calls"));
    let metrics = seen.iter().find(|e| e["type"] == "metrics").unwrap();
    assert!(
        (metrics["cost_usd"].as_f64().unwrap() - 0.02).abs() < 1e-9,
        "{metrics}"
    );
    assert_eq!(ends(&seen), 1);

    // A ceiling one call fills: the call runs, then the turn ends without asking again.
    let srv2 = start(
        McpServer {
            cost_usd: 0.01,
            ..http_server(&tools.url)
        },
        |c| c.turn.max_cost_usd = 0.01,
    )
    .await;
    let mut a = srv2.joined("ops", "ann").await;
    srv2.mock
        .push(Behavior::calls(&[("get_time", "{}"), ("get_time", "{}")]));
    a.send(json!({"type": "prompt", "text": "Time?"})).await;
    let seen = a.until_end().await;
    assert_eq!(outcomes(&seen), ["ok", "refused"], "{seen:?}");
    let err = seen.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["code"], "turn_budget_spent", "{err}");
    assert_eq!(seen.last().unwrap()["finish_reason"], "error");
    assert_eq!(
        srv2.mock.requests().len(),
        1,
        "the model was not asked again"
    );
    assert_eq!(ends(&seen), 1);
}

#[tokio::test]
async fn max_concurrency_holds_calls_back_and_cancel_stops_a_running_tool() {
    let tools = http_tools().await;
    let mut server = http_server(&tools.url);
    server.max_concurrency = 1;
    let srv = start(server, |_| {}).await;
    // Two rooms call `slow` at once: with one slot, they run one after the other.
    let mut a = srv.joined("r1", "ann").await;
    let mut b = srv.joined("r2", "bob").await;
    srv.mock.set_default(Behavior::text(&["ok"]));
    for _ in 0..2 {
        srv.mock
            .push(Behavior::calls(&[("slow", r#"{"seconds": 0.4}"#)]));
    }
    a.send(json!({"type": "prompt", "text": "wait"})).await;
    b.send(json!({"type": "prompt", "text": "wait"})).await;
    let (ra, rb) = tokio::join!(a.until_end(), b.until_end());
    for seen in [&ra, &rb] {
        assert_eq!(tool_events(seen).last().unwrap().1, "ok", "{seen:?}");
    }
    let took = |seen: &[Value]| {
        seen.iter()
            .find(|e| e["status"] == "ok")
            .and_then(|e| e["duration_ms"].as_u64())
            .unwrap()
    };
    assert!(
        took(&ra).max(took(&rb)) >= 750,
        "the second waited for the slot: {} {}",
        took(&ra),
        took(&rb)
    );
    srv.mock.push(Behavior::calls(&[("peak", "{}")]));
    a.send(json!({"type": "prompt", "text": "peak?"})).await;
    let seen = a.until_end().await;
    assert_eq!(
        tool_events(&seen).last().unwrap().2,
        "1",
        "never two at once"
    );

    // Cancel while a tool runs: the call ends as an error, the turn as cancelled.
    srv.mock
        .push(Behavior::calls(&[("slow", r#"{"seconds": 30}"#)]));
    a.send(json!({"type": "prompt", "text": "wait long"})).await;
    let running = a.until_type("tool").await;
    let turn_id = running.last().unwrap()["turn_id"].clone();
    let t0 = std::time::Instant::now();
    a.send(json!({"type": "cancel", "turn_id": turn_id})).await;
    let seen = a.until_end().await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    let last_tool = tool_events(&seen).last().cloned().unwrap();
    assert_eq!(last_tool.1, "error", "{seen:?}");
    assert!(last_tool.3.as_str().unwrap().contains("cancelled"));
    assert_eq!(seen.last().unwrap()["finish_reason"], "cancelled");
}

#[tokio::test]
async fn the_rag_alias_runs_server_tools_and_reports_them_in_the_extension() {
    let tools = http_tools().await;
    let srv = start(http_server(&tools.url), |_| {}).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(srv.http("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    srv.mock.push(Behavior::calls(&[("get_time", "{}")]));
    srv.mock.push(Behavior::text(&["It is ", "nine."]));
    let ask = json!([{"role": "user", "content": "What time is it?"}]);
    let resp = post(json!({"model": "confab-rag", "stream": true, "messages": ask}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    let chunks = common::sse_json(&body);
    let live: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["confab_tool"]["status"].as_str())
        .collect();
    assert_eq!(live, ["running", "ok"], "{body}");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
        "server-side calls are not the client's to run: {body}"
    );
    let last = chunks
        .iter()
        .rev()
        .find(|c| c["confab"].is_object())
        .unwrap();
    assert_eq!(last["confab"]["tools"][0]["output"], "09:00", "{last}");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "It is nine.");

    // A chain name is a plain gateway: confab's tools are not offered.
    let resp = post(json!({"model": "default", "messages": ask}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let last_req = srv.mock.requests().last().cloned().unwrap();
    assert!(last_req.get("tools").is_none(), "{last_req}");
    assert_eq!(
        srv.mock.requests().len(),
        3,
        "the same question again: an answer built on a tool is never cached"
    );
}

#[tokio::test]
async fn a_model_that_calls_tools_after_its_budget_is_not_asked_again() {
    let tools = http_tools().await;
    let srv = start(http_server(&tools.url), |c| c.turn.max_tool_calls = 1).await;
    let mut a = srv.joined("ops", "ann").await;
    srv.mock.push(Behavior::calls(&[("get_time", "{}")]));
    // Offered no tools any more, the model calls one anyway; and would forever.
    srv.mock.set_default(Behavior::calls(&[("get_time", "{}")]));
    a.send(json!({"type": "prompt", "text": "Time?"})).await;
    let seen = a.until_end().await;
    assert_eq!(outcomes(&seen), ["ok", "refused"], "{seen:?}");
    assert_eq!(srv.mock.requests().len(), 2, "asked twice, not again");
    assert!(srv.mock.requests()[1].get("tools").is_none());
    assert_eq!(seen.last().unwrap()["finish_reason"], "stop");
    assert_eq!(ends(&seen), 1);
}
