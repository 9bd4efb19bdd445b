//! Request bodies are bounded on every protocol: over HTTP/2 (cleartext, prior knowledge) a
//! body needs no Content-Length, so the limit is counted on the bytes read, not trusted
//! from a header.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use confab_loadtest::mock::Behavior;
use serde_json::json;

use common::TestServer;

/// A body streamed in 64 KiB pieces, so no length is declared.
fn streamed(data: Vec<u8>) -> reqwest::Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_http2_body_over_the_limit_is_refused_without_a_declared_length() {
    let srv = TestServer::start_with(Behavior::text(&["ok"]), |c| {
        c.ingest.max_upload_bytes = 256 * 1024;
    })
    .await;
    let limit = 256 * 1024 + 64 * 1024;
    for path in ["/v1/documents", "/v1/chat/completions", "/v1/search"] {
        let resp = h2()
            .post(srv.http(path))
            .header("content-type", "application/json")
            .body(streamed(vec![b' '; limit + 100_000]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), 413, "{path}");
    }
    // A body within the limit, streamed the same way, is served.
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
    let resp = h2()
        .post(srv.http("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(streamed(body.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "ok");
}
