//! The OpenAI-compatible endpoint over HTTP: whole and streamed answers, the RAG alias with
//! sources and citations, errors in OpenAI's shape, and the model list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

async fn complete(srv: &TestServer, body: Value) -> (u16, Option<String>, String) {
    let resp = srv.chat_completion(&body).await;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, resp.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
fn data_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|l| l.trim().to_string())
        .collect()
}

#[tokio::test]
async fn whole_and_streamed_answers_with_rag_sources() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(
        Behavior::text(&["Larkspur replays ", "its WAL [1]."]),
        move |c| with_retrieval(c, &p),
    )
    .await;
    let r = reqwest::Client::new()
        .post(srv.http("/v1/documents?wait=true"))
        .json(&json!({"title": "Larkspur internals", "text": "After a crash, Larkspur replays its write-ahead log from the last checkpoint."}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Whole answer, RAG alias: sources in the extension field, usage, the mock saw them.
    let (status, _, body) = complete(
        &srv,
        json!({"model": "confab-rag", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "How does Larkspur recover after a crash?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Larkspur replays its WAL [1]."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["confab"]["sources"][0]["title"], "Larkspur internals");
    assert_eq!(v["confab"]["citations"], json!([1]));
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let sent = srv.mock.requests();
    assert!(
        sent[0].to_string().contains("write-ahead log"),
        "sources sent upstream"
    );

    // A chain name is a plain gateway: no retrieval; earlier turns are the context.
    let (status, ct, body) = complete(
        &srv,
        json!({"model": "default", "stream": true, "stream_options": {"include_usage": true},
               "messages": [
                 {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Hello!"},
                 {"role": "user", "content": "Tell me about recovery"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.unwrap().starts_with("text/event-stream"));
    let data = data_lines(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Larkspur replays its WAL [1].");
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["confab"]["sources"].as_array().unwrap().is_empty());
    let usage = chunks.last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty());
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let sent = srv.mock.requests();
    let messages = sent.last().unwrap()["messages"].to_string();
    assert!(
        messages.contains("Hello!") && !messages.contains("write-ahead"),
        "{messages}"
    );
}

#[tokio::test]
async fn errors_come_in_openai_shape() {
    let srv = TestServer::start_with(Behavior::Hang, |c| c.turn.deadline_ms = 400).await;
    let (status, _, body) = complete(
        &srv,
        json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["error"]["param"], "model");
    let (status, _, body) = complete(
        &srv,
        json!({"model": "default", "messages": [{"role": "assistant", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
        "invalid_request_error"
    );
    // The turn failed before any text (deadline while the upstream hangs): an HTTP error,
    // streaming or not.
    for stream in [false, true] {
        let (status, _, body) = complete(
            &srv,
            json!({"model": "default", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 504, "{body}");
        assert_eq!(v["error"]["code"], "upstream_timeout", "{body}");
    }
    let models: Value = reqwest::get(srv.http("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["confab-rag", "default"]);
}

#[tokio::test]
async fn a_failure_after_text_ends_the_stream_with_an_error_chunk() {
    let srv = TestServer::start(Behavior::Cut {
        tokens: vec!["Half an ans".into()],
        gap: std::time::Duration::from_millis(5),
    })
    .await;
    let (status, _, body) = complete(
        &srv,
        json!({"model": "default", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let data = data_lines(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["delta"]["content"] == "Half an ans")
    );
    let err = chunks
        .iter()
        .find(|c| !c["error"].is_null())
        .expect("error chunk");
    assert_eq!(err["error"]["code"], "upstream_cut", "{err}");
}

#[tokio::test]
async fn a_streaming_client_that_hangs_up_aborts_the_upstream_call() {
    // 200 tokens 20 ms apart: the answer would take 4 s; the client leaves after its first text.
    let srv = TestServer::start(Behavior::tokens(200, std::time::Duration::from_millis(20))).await;
    let body = json!({"model": "default", "stream": true,
        "messages": [{"role": "user", "content": "a long answer"}]});
    let mut resp = srv.chat_completion(&body).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    while !seen.contains("\"content\":\"t") {
        let chunk = resp.chunk().await.unwrap().expect("a chunk before the end");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    assert_eq!(
        srv.upstream_aborted(common::WAIT).await,
        1,
        "the upstream stream was closed"
    );
    assert_eq!(srv.mock.completed(), 0, "and never ran to its end");
}

#[tokio::test]
async fn sampling_settings_reach_the_upstream_and_skip_the_cache() {
    let srv = TestServer::start(Behavior::text(&["ok"])).await;
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "knobs?"}],
        "temperature": 0.3, "top_p": 0.5, "max_tokens": 7, "max_completion_tokens": 9,
        "stop": "END", "seed": 42, "presence_penalty": 0.1, "frequency_penalty": -0.2,
        "response_format": {"type": "json_object"}});
    for _ in 0..2 {
        let (status, _, text) = complete(&srv, body.clone()).await;
        assert_eq!(status, 200, "{text}");
    }
    let seen = srv.mock.requests();
    assert_eq!(
        seen.len(),
        2,
        "the same knobs twice: the upstream both times, no cache"
    );
    let r = &seen[1];
    assert_eq!(r["temperature"], 0.3);
    assert_eq!(r["top_p"], 0.5);
    assert_eq!(r["max_tokens"], 7, "the smaller of the two caps");
    assert_eq!(r["stop"], json!(["END"]));
    assert_eq!(r["seed"], 42);
    assert_eq!(r["presence_penalty"], 0.1);
    assert_eq!(r["frequency_penalty"], -0.2);
    assert_eq!(r["response_format"], json!({"type": "json_object"}));
    // Without knobs, the provider's own settings and the cache as before.
    let plain = json!({"model": "default", "messages": [{"role": "user", "content": "plain?"}]});
    for _ in 0..2 {
        assert_eq!(complete(&srv, plain.clone()).await.0, 200);
    }
    let seen = srv.mock.requests();
    assert_eq!(seen.len(), 3, "the second plain request is a cache hit");
    assert!(seen[2].get("temperature").is_none(), "{}", seen[2]);
    assert_eq!(seen[2]["max_tokens"], 512, "the configured cap");
}

#[tokio::test]
async fn bad_settings_are_a_400_naming_them_and_json_never_falls_back_to_plain_text() {
    let srv = TestServer::start(Behavior::Status {
        code: 500,
        retry_after: None,
    })
    .await;
    let ask = |extra: Value| {
        let mut b = json!({"model": "default", "messages": [{"role": "user", "content": "q"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (bad, param) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"n": 2}), "n"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "ResponseFormat",
        ),
    ] {
        let (status, _, text) = complete(&srv, ask(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains(param), "{bad}: {text}");
    }
    assert!(
        srv.mock.requests().is_empty(),
        "nothing refused reached the upstream"
    );
    // The model fails: a plain question gets the extractive fallback's answer, a JSON one an
    // error (the fallback would answer in plain text).
    let (status, _, text) = complete(&srv, ask(json!({}))).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["confab"]["provider"], "extractive", "{v}");
    let (status, _, text) = complete(
        &srv,
        ask(json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    assert!(status >= 500, "{status}: {text}");
}

#[tokio::test]
async fn a_gateway_chain_speaks_with_the_clients_system_prompt_and_rag_adds_it_after_confabs() {
    let srv = TestServer::start(Behavior::text(&["ok"])).await;
    let messages = json!([
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Who are you?"}]);
    let (status, _, text) = complete(&srv, json!({"model": "default", "messages": messages})).await;
    assert_eq!(status, 200, "{text}");
    let sent = &srv.mock.requests()[0]["messages"];
    assert_eq!(
        sent[0],
        json!({"role": "system", "content": "You are a pirate."}),
        "{sent}"
    );
    assert!(
        !sent.to_string().contains("shared chat room"),
        "confab's room prompt is not sent to a gateway chain: {sent}"
    );
    // Another system prompt, another conversation: not the first one's cached answer.
    let other = json!([
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Who are you?"}]);
    assert_eq!(
        complete(&srv, json!({"model": "default", "messages": other}))
            .await
            .0,
        200
    );
    assert_eq!(srv.mock.requests().len(), 2);
    // The RAG alias: confab's system prompt first, then the client's.
    let (status, _, text) =
        complete(&srv, json!({"model": "confab-rag", "messages": messages})).await;
    assert_eq!(status, 200, "{text}");
    let sent = &srv.mock.requests()[2]["messages"];
    assert_eq!(sent[0]["role"], "system");
    assert!(
        sent[0]["content"]
            .as_str()
            .unwrap()
            .contains("shared chat room"),
        "{sent}"
    );
    assert_eq!(
        sent[1],
        json!({"role": "system", "content": "You are a pirate."}),
        "{sent}"
    );
}

#[tokio::test]
async fn anthropic_links_get_the_settings_they_have_and_refuse_the_others() {
    let srv = TestServer::start_with(Behavior::text(&["ok"]), |c| {
        let mut p = c.providers["mock"].clone();
        p.kind = confab::config::ProviderKind::Anthropic;
        c.providers.insert("claude".into(), p);
        common::chain(c, &["claude"]);
    })
    .await;
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "q"}],
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 5, "stop": ["END"]});
    let (status, _, text) = complete(&srv, body).await;
    assert_eq!(status, 200, "{text}");
    let r = &srv.mock.requests()[0];
    assert_eq!(r["temperature"], 0.5, "{r}");
    assert_eq!(r["top_p"], 0.9, "{r}");
    assert_eq!(r["max_tokens"], 5, "{r}");
    assert_eq!(r["stop_sequences"], json!(["END"]), "{r}");
    assert!(r.get("stop").is_none() && r.get("seed").is_none(), "{r}");
    for (bad, param) in [
        (json!({"seed": 1}), "seed"),
        (json!({"temperature": 1.5}), "temperature"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ] {
        let mut b = json!({"model": "default", "messages": [{"role": "user", "content": "q"}]});
        b.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (status, _, text) = complete(&srv, b).await;
        assert_eq!(status, 400, "{bad}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("claude"),
            "{v}"
        );
    }
    assert_eq!(
        srv.mock.requests().len(),
        1,
        "refused requests never reach the upstream"
    );
}
