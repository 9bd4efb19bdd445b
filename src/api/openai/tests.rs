//! The response phase of `/v1/chat/completions`: a turn's events into a whole completion or
//! an OpenAI error (the routes' own checks are covered by the integration suites).

#![allow(clippy::unwrap_used)]

use poem::IntoResponse;

use super::*;
use crate::api::strict::Str;
use crate::protocol::{
    FinishReason, SearchOutput, SourceResult, ToolInput, ToolOutput, TurnMetrics,
};

/// A whole turn: start, the retrieval event, two deltas, metrics and end.
pub(super) fn events() -> Vec<EventBody> {
    let source = SourceResult {
        n: 1,
        doc_id: "doc-1".into(),
        title: "Atlas".into(),
        section: "Europe".into(),
        page: Some(4),
        chunk: 0,
        score: 0.8,
        snippet: "Paris is the capital of France.".into(),
        flagged: None,
    };
    vec![
        EventBody::Start {
            model: "m".into(),
            chain: "default".into(),
            prompt_seq: 0,
            cached: None,
        },
        EventBody::own_tool(
            "search_documents",
            ToolInput::Other(serde_json::json!({})),
            ToolOutput::SearchDocuments(SearchOutput {
                results: vec![source],
                ..SearchOutput::default()
            }),
            1,
        ),
        EventBody::Delta {
            text: "Paris ".into(),
        },
        EventBody::Delta { text: "[1]".into() },
        EventBody::Metrics(TurnMetrics {
            model: "m".into(),
            provider: "mock".into(),
            chain: "default".into(),
            ttft_ms: Some(1),
            duration_ms: 2,
            tokens_in: 10,
            tokens_out: 5,
            usage_reported: true,
            cost_usd: 0.001,
            citations: vec![1],
            citation_added: false,
            cached: false,
            saved_usd: 0.0,
            attempts: Vec::new(),
            trace_id: None,
        }),
        EventBody::End {
            finish_reason: FinishReason::Stop,
            partial: false,
        },
    ]
}

fn request(stream: bool) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: Str("default".into()),
        messages: Vec::new(),
        stream: Some(stream),
        stream_options: None,
        user: None,
        temperature: None,
        top_p: None,
        max_tokens: None,
        max_completion_tokens: None,
        stop: None,
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        response_format: None,
        n: None,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
    }
}

async fn answer(evs: Vec<EventBody>, stream: bool) -> poem::Response {
    answer_out(evs.into_iter().map(Out::Event).collect(), stream).await
}

async fn answer_out(outs: Vec<Out>, stream: bool) -> poem::Response {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for out in outs {
        tx.send(out).await.unwrap();
    }
    drop(tx);
    respond(request(stream), rx, None).await.into_response()
}

/// A turn whose answer is two calls, the first streamed in three pieces.
fn calls() -> Vec<Out> {
    let piece = |index, id: Option<&str>, name: Option<&str>, arguments: &str| {
        Out::Call(crate::providers::ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: arguments.into(),
        })
    };
    let mut evs = events();
    evs.retain(|e| !matches!(e, EventBody::Delta { .. } | EventBody::End { .. }));
    let mut outs: Vec<Out> = evs.into_iter().map(Out::Event).collect();
    outs.extend([
        piece(0, Some("call_a"), Some("get_weather"), ""),
        piece(0, None, None, "{\"city\":"),
        piece(1, Some("call_b"), Some("get_time"), "{}"),
        piece(0, None, None, "\"Oslo\"}"),
        Out::Event(EventBody::End {
            finish_reason: FinishReason::ToolCalls,
            partial: false,
        }),
    ]);
    outs
}

async fn json_of(resp: poem::Response) -> serde_json::Value {
    serde_json::from_slice(&resp.into_body().into_bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn tool_calls_come_whole_or_as_openai_pieces() {
    let body = json_of(answer_out(calls(), false).await).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null(), "{choice}");
    let calls_out = &choice["message"]["tool_calls"];
    assert_eq!(calls_out[0]["id"], "call_a");
    assert_eq!(calls_out[0]["type"], "function");
    assert_eq!(calls_out[0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
    assert_eq!(calls_out[1]["function"]["name"], "get_time");

    let resp = answer_out(calls(), true).await;
    let text = String::from_utf8(resp.into_body().into_bytes().await.unwrap().to_vec()).unwrap();
    let chunks: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let pieces: Vec<&serde_json::Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(pieces.len(), 4);
    assert_eq!(pieces[0]["id"], "call_a");
    assert_eq!(pieces[0]["type"], "function");
    assert!(pieces[1].get("id").is_none() && pieces[1].get("type").is_none());
    assert_eq!(pieces[2]["index"], 1);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[tokio::test]
async fn a_whole_completion_carries_text_usage_and_sources() {
    let resp = answer(events(), false).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().into_bytes().await.unwrap()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Paris [1]");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 15);
    assert_eq!(body["confab"]["sources"][0]["doc_id"], "doc-1");
    assert_eq!(body["model"], "m");
}

#[tokio::test]
async fn a_turn_refused_before_text_is_an_openai_error_with_its_status() {
    let evs = vec![
        EventBody::error(
            ErrorCode::RateLimited,
            "tokens_per_min".into(),
            Some(std::time::Duration::from_millis(1_500)),
        ),
        EventBody::End {
            finish_reason: FinishReason::Error,
            partial: false,
        },
    ];
    let resp = answer(evs, true).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "2");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().into_bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_stream_answers_with_server_sent_events() {
    let resp = answer(events(), true).await;
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let body = String::from_utf8(resp.into_body().into_bytes().await.unwrap().to_vec()).unwrap();
    assert!(body.contains("\"content\":\"Paris \""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}
