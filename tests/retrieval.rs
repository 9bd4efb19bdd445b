//! Retrieval end to end: the real embedding model (fetched by scripts/fetch-models.sh), the
//! embedded Qdrant store on disk, REST upload and search, and a room turn that cites.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, answer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

const WAL_DOC: &str = "The write-ahead log (WAL) of Larkspur DB records every change before it is \
applied to the data files. After a crash, Larkspur replays the WAL from the last checkpoint, so \
committed transactions survive a power failure.\n\nCheckpoints run every five minutes by default.";

const GARDEN_DOC: &str = "Tomatoes grow best in full sun with regular watering. Pinch off the \
side shoots so the plant puts its energy into fruit. Basil is a good companion plant.";

async fn post(url: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn upload_search_cite_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let p2 = path.clone();
    let mut srv = TestServer::start_with(
        Behavior::text(&["Larkspur replays the WAL ", "from the last checkpoint [1]."]),
        move |c| with_retrieval(c, &p2),
    )
    .await;

    let (status, wal) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "Larkspur internals", "text": WAL_DOC}),
    )
    .await;
    assert_eq!(status, 200, "{wal}");
    assert_eq!(wal["status"], "indexed");
    assert_eq!(wal["chunks"], 1);
    let (_, garden) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "Garden notes", "text": GARDEN_DOC}),
    )
    .await;
    // Same text again: same document, same version, nothing queued.
    let (status, again) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "Larkspur internals", "text": WAL_DOC}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&again["id"], &again["version"]),
        (&wal["id"], &wal["version"])
    );

    let (status, found) = post(
        &srv.http("/v1/search"),
        json!({"query": "what happens to transactions after a crash?"}),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().unwrap();
    assert_eq!(results[0]["doc_id"], wal["id"], "{found}");
    assert!(results.iter().all(|r| r["doc_id"] != garden["id"]
        || r["score"].as_f64().unwrap() < results[0]["score"].as_f64().unwrap()));
    assert_eq!(
        results.iter().filter(|r| r["doc_id"] == wal["id"]).count(),
        1,
        "no duplicates"
    );

    // A turn in a room: tool event with the right document, sources sent upstream, citation.
    let mut a = srv.joined("docs", "alice").await;
    a.send(json!({"type": "prompt", "text": "How does Larkspur recover after a crash?"}))
        .await;
    let ev = a.until_end().await;
    let types: Vec<_> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let tool_at = types.iter().position(|t| *t == "tool").expect("tool event");
    assert!(
        tool_at < types.iter().position(|t| *t == "delta").unwrap(),
        "tool before generation"
    );
    let tool = &ev[tool_at];
    assert_eq!(tool["name"], "search_documents");
    assert_eq!(tool["output"]["results"][0]["doc_id"], wal["id"]);
    assert_eq!(tool["output"]["results"][0]["title"], "Larkspur internals");
    assert_eq!(tool["output"]["results"][0]["n"], 1);
    let sent = srv.mock.requests();
    let user = sent[0]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        user.contains("[1] Larkspur internals: The write-ahead log"),
        "{user}"
    );
    assert!(
        user.ends_with("Question from alice: How does Larkspur recover after a crash?"),
        "{user}"
    );
    let system = sent[0]["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("only the numbered sources") && system.contains("brackets"),
        "{system}"
    );
    assert!(answer(&ev).contains("[1]"));
    let metrics = ev.iter().find(|e| e["type"] == "metrics").unwrap();
    assert_eq!(metrics["citations"], json!([1]));

    // Restart on the same data dir: still searchable.
    srv.shutdown.cancel();
    srv.running.take().unwrap().wait().await.unwrap();
    let p3 = path.clone();
    let srv2 =
        TestServer::start_with(Behavior::text(&["ok"]), move |c| with_retrieval(c, &p3)).await;
    let (status, found) = post(
        &srv2.http("/v1/search"),
        json!({"query": "WAL checkpoint replay"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found["results"][0]["doc_id"], wal["id"], "{found}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| {
        with_retrieval(c, &p);
        c.ingest.max_upload_bytes = 1024 * 1024;
    })
    .await;
    let (status, body) = post(&srv.http("/v1/search"), json!({"query": "   "})).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_message");
    let (status, body) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "x", "text": " \n\n "}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_message");
    let (status, _) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "x", "text": "a".repeat(3 * 1024 * 1024)}),
    )
    .await;
    assert_eq!(status, 413);
    let (status, body) = post(
        &srv.http("/v1/search"),
        json!({"query": "x", "mode": "fuzzy"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_message"))
    );
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/search"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn retrieval_disabled_is_a_clear_503() {
    let srv = TestServer::start(Behavior::text(&["ok"])).await;
    let (status, body) = post(&srv.http("/v1/search"), json!({"query": "anything"})).await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "retrieval_unavailable");
}

#[tokio::test]
async fn missing_model_files_fail_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mock = confab_loadtest::mock::MockUpstream::start(0, Behavior::text(&["ok"]))
        .await
        .unwrap();
    let mut cfg = common::config(&mock, |c| with_retrieval(c, dir.path()));
    cfg.embedding.model_dir = dir.path().join("no-such-model");
    let err = match confab::run(cfg, tokio_util::sync::CancellationToken::new()).await {
        Ok(_) => panic!("started without a model"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("model.onnx") && err.contains("fetch-models"),
        "{err}"
    );
}

#[tokio::test]
async fn an_uncited_answer_from_a_source_gets_its_citation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(
        Behavior::text(&[
            "After a crash Larkspur replays ",
            "the WAL from the last checkpoint.",
        ]),
        move |c| with_retrieval(c, &p),
    )
    .await;
    let (status, _) = post(
        &srv.http("/v1/documents?wait=true"),
        json!({"title": "Larkspur internals", "text": WAL_DOC}),
    )
    .await;
    assert_eq!(status, 200);
    let mut a = srv.joined("docs", "alice").await;
    a.send(json!({"type": "prompt", "text": "How does Larkspur recover after a crash?"}))
        .await;
    let ev = a.until_end().await;
    let deltas: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas.last(), Some(&" [1]"), "{deltas:?}");
    let metrics = ev.iter().find(|e| e["type"] == "metrics").unwrap();
    assert_eq!(metrics["citations"], json!([1]));
    assert_eq!(metrics["citation_added"], true);
}
