//! Tool calling through the OpenAI-compatible endpoint: the client's tools reach the model,
//! its calls come back whole and streamed, the results go upstream in the next request;
//! Anthropic's `tool_use`/`tool_result` translated both ways; bad exchanges refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

async fn post(srv: &TestServer, body: &Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time",
         "parameters": {"type": "object", "properties": {}}}}
    ])
}

/// The calls a stream adds up to, as `(id, name, arguments)`, assembled the way OpenAI's
/// SDKs do: by `index`, id and name from the first piece, arguments concatenated.
fn assemble(chunks: &[Value]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for c in chunks {
        for piece in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = piece["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push((String::new(), String::new(), String::new()));
            }
            let call = &mut calls[i];
            if let Some(id) = piece["id"].as_str() {
                call.0 = id.into();
            }
            if let Some(n) = piece["function"]["name"].as_str() {
                call.1.push_str(n);
            }
            if let Some(a) = piece["function"]["arguments"].as_str() {
                call.2.push_str(a);
            }
        }
    }
    calls
}

#[tokio::test]
async fn client_tools_round_trip_whole_and_streamed() {
    let srv = TestServer::start(Behavior::text(&["It is ", "sunny in Oslo."])).await;
    let ask = json!({"role": "user", "content": "Weather and time in Oslo?"});

    // Whole: two parallel calls, null content, finish tool_calls; the tools went upstream.
    srv.mock.push(Behavior::calls(&[
        ("get_weather", r#"{"city":"Oslo"}"#),
        ("get_time", "{}"),
    ]));
    let body = json!({"model": "default", "messages": [ask], "tools": weather_tools(),
        "tool_choice": "auto", "parallel_tool_calls": true});
    let (status, text) = post(&srv, &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null(), "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
    assert_eq!(calls[1]["function"]["name"], "get_time");
    let sent = &srv.mock.requests()[0];
    assert_eq!(
        sent["tools"][0]["function"]["name"], "get_weather",
        "{sent}"
    );
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(sent["parallel_tool_calls"], true);

    // The results go upstream as tool messages after the assistant's calls; text answers.
    let ids: Vec<String> = calls
        .iter()
        .map(|c| c["id"].as_str().unwrap().into())
        .collect();
    let follow = json!({"model": "default", "tools": weather_tools(), "messages": [
        ask,
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": ids[1], "content": "09:00"},
        {"role": "tool", "tool_call_id": ids[0], "content": "sunny, 21 C"}]});
    let (status, text) = post(&srv, &follow).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "It is sunny in Oslo."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent = &srv.mock.requests()[1]["messages"];
    let n = sent.as_array().unwrap().len();
    assert_eq!(sent[n - 3]["role"], "assistant", "{sent}");
    assert_eq!(sent[n - 3]["tool_calls"][0]["id"], ids[0].as_str());
    assert_eq!(
        sent[n - 3]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Oslo"}"#
    );
    assert_eq!(
        sent[n - 2],
        json!({"role": "tool", "content": "09:00", "tool_call_id": ids[1]})
    );
    assert_eq!(sent[n - 1]["content"], "sunny, 21 C");

    // Streamed: the pieces add up to the same calls; tools never come from the cache.
    srv.mock
        .push(Behavior::calls(&[("get_weather", r#"{"city":"Oslo"}"#)]));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, text) = post(&srv, &streamed).await;
    assert_eq!(status, 200, "{text}");
    let cs = common::sse_json(&text);
    let got = assemble(&cs);
    assert_eq!(got.len(), 1, "{text}");
    assert!(got[0].0.starts_with("call_"), "{got:?}");
    assert_eq!(
        (got[0].1.as_str(), got[0].2.as_str()),
        ("get_weather", r#"{"city":"Oslo"}"#)
    );
    let pieces = cs
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert!(pieces >= 2, "streamed in pieces: {text}");
    let finish = cs
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    assert_eq!(
        srv.mock.requests().len(),
        3,
        "each tool request reached the model"
    );
}

#[tokio::test]
async fn anthropic_tool_use_and_tool_result_are_translated_both_ways() {
    let srv = TestServer::start_with(Behavior::text(&["Sunny."]), |c| {
        let mut p = c.providers["mock"].clone();
        p.kind = confab::config::ProviderKind::Anthropic;
        c.providers.insert("claude".into(), p);
        common::chain(c, &["claude"]);
    })
    .await;
    srv.mock
        .push(Behavior::calls(&[("get_weather", r#"{"city":"Oslo"}"#)]));
    let ask = json!({"role": "user", "content": "Weather in Oslo?"});
    let body = json!({"model": "default", "messages": [ask], "tools": weather_tools(),
        "tool_choice": "required", "parallel_tool_calls": false});
    let (status, text) = post(&srv, &body).await;
    assert_eq!(status, 200, "{text}");
    let sent = &srv.mock.requests()[0];
    assert_eq!(sent["tools"][0]["name"], "get_weather", "{sent}");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert!(
        call["id"].as_str().unwrap().starts_with("toolu_mock_"),
        "{call}"
    );
    assert_eq!(call["function"]["arguments"], r#"{"city":"Oslo"}"#);

    let follow = json!({"model": "default", "tools": weather_tools(), "messages": [
        ask,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]});
    let (status, text) = post(&srv, &follow).await;
    assert_eq!(status, 200, "{text}");
    let sent = &srv.mock.requests()[1]["messages"];
    let n = sent.as_array().unwrap().len();
    assert_eq!(sent[n - 2]["role"], "assistant", "{sent}");
    assert_eq!(
        sent[n - 2]["content"][0],
        json!({"type": "text", "text": "Let me look."})
    );
    assert_eq!(
        sent[n - 2]["content"][1],
        json!({"type": "tool_use", "id": call["id"], "name": "get_weather",
               "input": {"city": "Oslo"}})
    );
    assert_eq!(sent[n - 1]["role"], "user");
    assert_eq!(
        sent[n - 1]["content"][0],
        json!({"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"})
    );
}

#[tokio::test]
async fn broken_tool_exchanges_are_a_400_naming_the_parameter() {
    let srv = TestServer::start(Behavior::text(&["ok"])).await;
    let ask = json!({"role": "user", "content": "q"});
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_time", "arguments": "{}"}});
    let cases = [
        (
            json!({"messages": [ask, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            "messages",
            "nope",
        ),
        (
            json!({"messages": [ask, {"role": "assistant", "tool_calls": [call]}]}),
            "messages",
            "assistant",
        ),
        (
            json!({"messages": [ask, {"role": "assistant", "tool_calls": [call]},
                {"role": "user", "content": "and?"}]}),
            "messages",
            "call_1",
        ),
        (
            json!({"messages": [ask], "tools": weather_tools(),
                "tool_choice": {"type": "function", "function": {"name": "launch"}}}),
            "tool_choice",
            "launch",
        ),
        (
            json!({"messages": [ask], "tool_choice": "required"}),
            "tool_choice",
            "no tools",
        ),
        (
            json!({"messages": [ask], "tools": [weather_tools()[1], weather_tools()[1]]}),
            "tools",
            "get_time",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages",
            "image_url",
        ),
    ];
    for (mut body, param, says) in cases {
        body["model"] = json!("default");
        let (status, text) = post(&srv, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    assert!(srv.mock.requests().is_empty(), "nothing reached the model");
    // Text parts are text.
    let body = json!({"model": "default", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}]}]});
    let (status, text) = post(&srv, &body).await;
    assert_eq!(status, 200, "{text}");
    let sent = srv.mock.requests()[0]["messages"].to_string();
    assert!(sent.contains("part one part two"), "{sent}");
}

#[tokio::test]
async fn a_failing_link_falls_back_before_the_calls_and_calls_are_never_the_extractive_links() {
    let srv = TestServer::start_with(Behavior::text(&["x"]), |c| {
        let mut backup = c.providers["mock"].clone();
        backup.model = "backup-model".into();
        c.providers.insert("backup".into(), backup);
        common::chain(c, &["mock", "backup", "extractive"]);
    })
    .await;
    srv.mock.push(Behavior::Status {
        code: 500,
        retry_after: None,
    });
    srv.mock.push(Behavior::calls(&[("get_time", "{}")]));
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "time?"}],
        "tools": weather_tools(), "tool_choice": "required"});
    let (status, text) = post(&srv, &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    assert_eq!(v["model"], "backup-model", "{v}");
    // Both model links fail: a call cannot come from the extractive fallback.
    for _ in 0..2 {
        srv.mock.push(Behavior::Status {
            code: 500,
            retry_after: None,
        });
    }
    let (status, text) = post(&srv, &body).await;
    assert_eq!(status, 502, "{text}");
}
