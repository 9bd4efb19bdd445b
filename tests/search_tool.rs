//! `search_documents` as a tool the model calls: with retrieval on, the model is offered
//! follow-up searches of the tenant's documents besides the search before the answer. The
//! scripted upstream calls it; confab searches (real embedding model, embedded store),
//! numbers what it found after the sources the model already has, and the answer cites
//! them. Tenants' allow-lists and `turn.search_tool` decide whether it is offered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, with_retrieval};
use confab::Config;
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

const WAL_DOC: &str = "The write-ahead log (WAL) of Larkspur DB records every change before it is \
applied to the data files. After a crash, Larkspur replays the WAL from the last checkpoint, so \
committed transactions survive a power failure.";

const GARDEN_DOC: &str = "Tomatoes grow best in full sun with regular watering. Pinch off the \
side shoots so the plant puts its energy into fruit. Basil is a good companion plant.";

/// A server with retrieval on, one source per search (so the first search finds one
/// document and a follow-up finds the other), and both documents uploaded (with `key`
/// when the server has tenants).
async fn start(
    dir: &std::path::Path,
    key: Option<&str>,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> (TestServer, [String; 2]) {
    let dir = dir.to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["done"]), move |c| {
        with_retrieval(c, &dir);
        c.retrieval.top_k = 1;
        tweak(c);
    })
    .await;
    let mut ids = Vec::new();
    for (title, text) in [
        ("Larkspur internals", WAL_DOC),
        ("Garden notes", GARDEN_DOC),
    ] {
        let mut req = reqwest::Client::new().post(srv.http("/v1/documents?wait=true"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req
            .json(&json!({"title": title, "text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let doc: Value = resp.json().await.unwrap();
        ids.push(doc["id"].as_str().unwrap().to_string());
    }
    (srv, [ids[0].clone(), ids[1].clone()])
}

/// The names of the tools upstream request `i` offered.
fn offered(srv: &TestServer, i: usize) -> Vec<String> {
    srv.mock.requests()[i]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The model's calls' events of a turn that ended (running left out), in order.
fn ended_calls(evs: &[Value]) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e["type"] == "tool" && e["call_id"].is_string() && e["status"] != "running")
        .collect()
}

#[tokio::test]
async fn a_follow_up_search_finds_more_sources_numbered_after_the_first_and_citable() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, [wal, garden]) = start(dir.path(), None, |_| {}).await;
    let mut a = srv.joined("docs", "ann").await;
    let mut b = srv.joined("docs", "bob").await;
    a.until_type("presence").await;

    // Two searches in one round: one finds the garden notes (new: [2]), one finds the WAL
    // document the model already has as [1] (it keeps its number).
    srv.mock.push(Behavior::calls(&[
        ("search_documents", r#"{"query":"how to grow tomatoes"}"#),
        ("search_documents", r#"{"query":"Larkspur crash recovery"}"#),
    ]));
    srv.mock.push(Behavior::text(&[
        "Larkspur replays its WAL [1]; ",
        "pinch off tomato side shoots [2].",
    ]));
    a.send(json!({"type": "prompt", "text": "How does Larkspur recover after a crash?"}))
        .await;
    let seen_a = a.until_end().await;
    let seen_b = b.until_end().await;

    // The search before the answer found the WAL document as [1].
    let first = seen_a
        .iter()
        .find(|e| e["type"] == "tool" && e["call_id"].is_null())
        .unwrap();
    assert_eq!(first["output"]["results"][0]["doc_id"], wal.as_str());
    assert!(offered(&srv, 0).contains(&"search_documents".to_string()));

    // The model's searches, as every member sees them.
    let (calls_a, calls_b) = (ended_calls(&seen_a), ended_calls(&seen_b));
    assert_eq!(calls_a, calls_b, "both members see the same searches");
    assert_eq!(calls_a.len(), 2, "{seen_a:?}");
    let by_query = |q: &str| {
        *calls_a
            .iter()
            .find(|e| e["input"]["query"] == q)
            .unwrap_or_else(|| panic!("no search for {q}: {calls_a:?}"))
    };
    let tomatoes = by_query("how to grow tomatoes");
    assert_eq!(tomatoes["status"], "ok");
    assert!(tomatoes["server"].is_null(), "confab's own tool");
    assert_eq!(tomatoes["input"]["top_k"], 1);
    assert_eq!(tomatoes["output"]["results"][0]["doc_id"], garden.as_str());
    assert_eq!(tomatoes["output"]["results"][0]["n"], 2);
    let crash = by_query("Larkspur crash recovery");
    assert_eq!(crash["output"]["results"][0]["doc_id"], wal.as_str());
    assert_eq!(
        crash["output"]["results"][0]["n"], 1,
        "a known source keeps its number"
    );
    let running = seen_a
        .iter()
        .filter(|e| e["type"] == "tool" && e["status"] == "running")
        .count();
    assert_eq!(running, 2, "each search is announced while it runs");

    // The model was told what each search found, numbered, and its answer's [2] counts.
    let second = srv.mock.requests()[1]["messages"].clone();
    let results: Vec<&str> = second
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert!(
        results[0].contains("[2] Garden notes: Tomatoes grow best"),
        "{results:?}"
    );
    assert!(
        results[1].contains("[1] Larkspur internals: The write-ahead log"),
        "{results:?}"
    );
    let metrics = seen_a.iter().find(|e| e["type"] == "metrics").unwrap();
    assert_eq!(metrics["citations"], json!([1, 2]));
    let ends = seen_a.iter().filter(|e| e["type"] == "end").count();
    assert_eq!(ends, 1);
}

#[tokio::test]
async fn a_search_without_a_query_is_an_error_the_model_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = start(dir.path(), None, |_| {}).await;
    let mut a = srv.joined("docs", "ann").await;
    srv.mock.push(Behavior::calls(&[(
        "search_documents",
        r#"{"q":"tomatoes"}"#,
    )]));
    srv.mock.push(Behavior::text(&["I could not search."]));
    a.send(json!({"type": "prompt", "text": "Anything about tomatoes?"}))
        .await;
    let seen = a.until_end().await;
    let calls = ended_calls(&seen);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["status"], "error");
    assert!(calls[0]["error"].as_str().unwrap().contains("`query`"));
    let told = srv.mock.requests()[1]["messages"].to_string();
    assert!(told.contains("non-empty `query`"), "{told}");
}

#[tokio::test]
async fn an_allow_list_without_it_or_search_tool_off_offers_no_search() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = start(dir.path(), Some("key-ann"), |c| {
        common::tenant(c, "acme", &[("ann", "key-ann")]);
        c.auth.tenants.get_mut("acme").unwrap().tools = Some(vec!["get_time".into()]);
    })
    .await;
    let mut a = srv.joined_with_key("docs", "ann", "key-ann").await;
    srv.mock.push(Behavior::calls(&[(
        "search_documents",
        r#"{"query":"tomatoes"}"#,
    )]));
    srv.mock.push(Behavior::text(&["Without searching: no."]));
    a.send(json!({"type": "prompt", "text": "Anything about tomatoes?"}))
        .await;
    let seen = a.until_end().await;
    assert!(offered(&srv, 0).is_empty(), "{:?}", offered(&srv, 0));
    let calls = ended_calls(&seen);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["status"], "refused");
    drop(srv);

    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = start(dir.path(), None, |c| c.turn.search_tool = false).await;
    let mut a = srv.joined("docs", "ann").await;
    a.send(json!({"type": "prompt", "text": "Anything about tomatoes?"}))
        .await;
    a.until_end().await;
    assert!(
        srv.mock.requests()[0].get("tools").is_none(),
        "{}",
        srv.mock.requests()[0]
    );
}

#[tokio::test]
async fn the_rag_alias_offers_and_runs_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, [_, garden]) = start(dir.path(), None, |_| {}).await;
    srv.mock.push(Behavior::calls(&[(
        "search_documents",
        r#"{"query":"growing tomatoes"}"#,
    )]));
    srv.mock
        .push(Behavior::text(&["Pinch off side shoots [2]."]));
    let ask = json!([{"role": "user", "content": "How does Larkspur recover after a crash?"}]);
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/chat/completions"))
        .json(&json!({"model": "confab-rag", "messages": ask}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let tools = body["confab"]["tools"].as_array().unwrap();
    let search = tools
        .iter()
        .find(|t| t["call_id"].is_string())
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(search["status"], "ok");
    assert_eq!(search["output"]["results"][0]["doc_id"], garden.as_str());
    assert_eq!(search["output"]["results"][0]["n"], 2);
    let listed: Vec<u64> = body["confab"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["n"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2], "both searches' sources: {body}");
    assert_eq!(body["confab"]["citations"], json!([2]));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Pinch off side shoots [2]."
    );
}
