//! The OpenAI-compatible endpoint over HTTP: whole and streamed answers, the RAG alias with
//! sources and citations, errors in OpenAI's shape, and the model list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

async fn complete(srv: &TestServer, body: Value) -> (u16, Option<String>, String) {
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
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
