//! Following a room over SSE: the same events as WebSocket members (byte for byte), `id:` =
//! seq, and `Last-Event-ID` resumes with exactly the missed events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

/// An SSE event: (id, event type, data).
type Sse = (Option<u64>, String, String);

/// Reads SSE events until one of type `until` arrives.
async fn read_until(resp: &mut reqwest::Response, buf: &mut String, until: &str) -> Vec<Sse> {
    let mut out = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            if kind.is_empty() {
                kind = "message".into(); // SSE's default event type
            }
            let done = kind == until;
            out.push((id, kind, data));
            if done {
                return out;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("sse timeout")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn a_viewer_sees_what_members_see_and_resumes_by_last_event_id() {
    let srv = TestServer::start(Behavior::text(&["Hello ", "there."])).await;
    let mut viewer = reqwest::get(srv.http("/v1/rooms/lobby/events"))
        .await
        .unwrap();
    assert_eq!(viewer.status().as_u16(), 200);
    assert!(
        viewer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let first = read_until(&mut viewer, &mut buf, "resync").await;
    assert_eq!(first.len(), 1);
    let resync: Value = serde_json::from_str(&first[0].2).unwrap();
    let epoch = resync["snapshot"]["epoch"].as_str().unwrap().to_string();

    let mut alice = srv.joined("lobby", "alice").await;
    alice.send(json!({"type": "prompt", "text": "hi"})).await;
    let ws_events = alice.until_end().await;
    let sse = read_until(&mut viewer, &mut buf, "end").await;
    // Every WebSocket event from the prompt on, with the same bytes, in the same order.
    let ws_texts: Vec<String> = ws_events.iter().map(|e| e.to_string()).collect();
    let sse_tail: Vec<&Sse> = sse.iter().skip_while(|(_, k, _)| k != "message").collect();
    assert_eq!(sse_tail.len(), ws_texts.len(), "{sse:?}");
    for ((id, kind, data), ws) in sse_tail.iter().zip(&ws_texts) {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(&v.to_string(), ws);
        assert_eq!(v["seq"].as_u64(), *id);
        assert_eq!(v["type"].as_str(), Some(kind.as_str()));
    }
    let delta_seq = sse_tail
        .iter()
        .find(|(_, k, _)| k == "delta")
        .unwrap()
        .0
        .unwrap();
    drop(viewer);

    // Resume after the first delta, in the epoch seen: exactly the events after it.
    let client = reqwest::Client::new();
    let mut again = client
        .get(srv.http(&format!("/v1/rooms/lobby/events?epoch={epoch}")))
        .header("Last-Event-ID", delta_seq.to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let resumed = read_until(&mut again, &mut buf, "end").await;
    let expected: Vec<u64> = sse_tail
        .iter()
        .filter_map(|(id, _, _)| *id)
        .filter(|s| *s > delta_seq)
        .collect();
    let got: Vec<u64> = resumed.iter().filter_map(|(id, _, _)| *id).collect();
    assert_eq!(got, expected);

    // Bad input: a Last-Event-ID that is not a number.
    let resp = client
        .get(srv.http("/v1/rooms/lobby/events"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_message");
}
