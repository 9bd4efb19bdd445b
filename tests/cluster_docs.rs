//! Cluster mode's documents end to end: real `confab` processes on one real `redis-server`.
//! A document uploaded through one node is listed, followed and deleted through another; a
//! node killed (SIGKILL) in the middle of a job has the job finished by another node, indexed
//! once; a document that takes its node down while parsing is failed after two nodes, not
//! passed on to the third.
//!
//! Each node keeps its own embedded vector store here (no Qdrant server can be installed on
//! the CI machine), so these tests check records, uploads and jobs, not shared search.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Node, Redis, node_config_with_retrieval};
use common::hostile::{children, deep_html, signal};
use confab_loadtest::mock::{Behavior, MockUpstream};
use serde_json::{Value, json};

/// The lease of `node_config_with_retrieval`.
const LEASE: Duration = Duration::from_millis(2_000);

struct Nodes {
    nodes: Vec<Node>,
    redis: Redis,
    _mock: MockUpstream,
    _dir: tempfile::TempDir,
}

async fn nodes(n: usize) -> Nodes {
    nodes_with(n, &[]).await
}

async fn nodes_with(n: usize, env: &[(&str, &str)]) -> Nodes {
    let mock = MockUpstream::start(0, Behavior::text(&["ok"]))
        .await
        .expect("mock");
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = node_config_with_retrieval(dir.path(), &mock.base_url(), &redis.url());
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Node::start_with(&format!("node{i}"), &config, env).await);
    }
    Nodes {
        nodes,
        redis,
        _mock: mock,
        _dir: dir,
    }
}

async fn upload(node: &Node, title: &str, text: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(node.http("/v1/documents"))
        .json(&json!({"title": title, "text": text}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn upload_file(node: &Node, name: &str, bytes: Vec<u8>) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let r = reqwest::Client::new()
        .post(node.http("/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.unwrap()
}

/// `GET /v1/documents/{id}` on `node`: status code and body.
async fn document(node: &Node, id: &str) -> (u16, Value) {
    let r = reqwest::get(node.http(&format!("/v1/documents/{id}")))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Follows a document on `node` until `done` says so.
async fn follow(node: &Node, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (status, doc) = document(node, id).await;
        assert_eq!(status, 200, "{doc}");
        if done(&doc) {
            return doc;
        }
        assert!(t0.elapsed() < limit, "still {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settled(doc: &Value) -> bool {
    doc["status"] == "indexed" || doc["status"] == "failed"
}

/// One series' value in a node's `/metrics` (0 when absent).
async fn metric(node: &Node, series: &str) -> f64 {
    let text = reqwest::get(node.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One series summed over `nodes`.
async fn total(nodes: &[Node], series: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += metric(n, series).await;
    }
    sum
}

const INDEXED: &str = "confab_ingest_documents_total{outcome=\"indexed\"}";
const RECLAIMED: &str = "confab_ingest_jobs_reclaimed_total";

/// `n` paragraphs of distinct text: a document of a few chunks per paragraph's worth.
fn long_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Paragraph {i} of the Larkspur operations manual. The replica numbered {i} \
                 replays its write-ahead log, checks segment {} against its checksum, and \
                 reports the offset {} to the coordinator before it serves reads again.\n\n",
                i * 7 + 3,
                i * 131 + 17
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_on_one_node_is_listed_followed_and_deleted_on_another() {
    let c = nodes(3).await;
    let (a, b, other) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let text = "After a crash, Larkspur replays its WAL before it serves reads.";
    let (status, doc) = upload(a, "Larkspur", text).await;
    assert_eq!(status, 202, "{doc}");
    let id = doc["id"].as_str().unwrap().to_string();
    // Listed and followed on B, whichever node's worker runs the job.
    let listed: Value = reqwest::get(b.http("/v1/documents"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["documents"][0]["id"], id.as_str(), "{listed}");
    let done = follow(b, &id, Duration::from_secs(60), settled).await;
    assert_eq!(done["status"], "indexed", "{done}");
    assert!(done["chunks"].as_u64().unwrap() >= 1, "{done}");
    // The same bytes through a third node: the same document, already indexed.
    let (status, same) = upload(other, "Larkspur", text).await;
    assert_eq!((status, &same["id"]), (200, &json!(id)), "{same}");
    // Deleted on B: gone on every node.
    let r = reqwest::Client::new()
        .delete(b.http(&format!("/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for n in &c.nodes {
        assert_eq!(document(n, &id).await.0, 404, "{}", n.id);
    }
    let listed: Value = reqwest::get(other.http("/v1/documents"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["documents"], json!([]), "{listed}");
    assert_eq!(c.redis.jobs_left().await, 0, "no job left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_node_is_killed_is_finished_by_another_node_once() {
    let mut c = nodes(3).await;
    let (status, doc) = upload(&c.nodes[0], "Manual", &long_text(1000)).await;
    assert_eq!(status, 202, "{doc}");
    let id = doc["id"].as_str().unwrap().to_string();
    // Wait until a worker is part-way through embedding, then kill its node.
    follow(&c.nodes[0], &id, Duration::from_secs(60), |d| {
        d["status"] == "embedding" && d["chunks_done"].as_u64() > Some(0)
    })
    .await;
    let holder = c.redis.job_holders().await;
    assert_eq!(holder.len(), 1, "one node runs the job: {holder:?}");
    let i = c.nodes.iter().position(|n| n.id == holder[0]).unwrap();
    c.nodes[i].kill();
    let survivors: Vec<Node> = c
        .nodes
        .drain(..)
        .enumerate()
        .filter_map(|(j, n)| (j != i).then_some(n))
        .collect();
    // Taken over within the lease, and finished.
    let done = follow(&survivors[0], &id, Duration::from_secs(120), settled).await;
    assert_eq!(done["status"], "indexed", "{done}");
    assert_eq!(done["chunks"], done["chunks_total"], "{done}");
    let indexed = total(&survivors, INDEXED).await;
    let reclaimed = total(&survivors, RECLAIMED).await;
    assert_eq!(
        (indexed, reclaimed),
        (1.0, 1.0),
        "indexed once, taken over once"
    );
    assert_eq!(c.redis.jobs_left().await, 0, "the job is closed");
    // Nothing runs it again later.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(total(&survivors, INDEXED).await, 1.0);
    assert_eq!(document(&survivors[1], &id).await.1["status"], "indexed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_frozen_in_a_job_past_the_lease_loses_it_and_leaves_the_finished_record_alone() {
    let c = nodes(3).await;
    let (_, doc) = upload(&c.nodes[0], "Manual", &long_text(1000)).await;
    let id = doc["id"].as_str().unwrap().to_string();
    follow(&c.nodes[0], &id, Duration::from_secs(60), |d| {
        d["status"] == "embedding" && d["chunks_done"].as_u64() > Some(0)
    })
    .await;
    let holder = c.redis.job_holders().await;
    let i = c.nodes.iter().position(|n| n.id == holder[0]).unwrap();
    c.nodes[i].freeze();
    // Another node takes the job over once the lease has run out, and finishes it.
    let other = &c.nodes[(i + 1) % 3];
    let done = follow(other, &id, Duration::from_secs(120), settled).await;
    assert_eq!(done["status"], "indexed", "{done}");
    assert_eq!(done["chunks_done"], done["chunks_total"], "{done}");
    // The frozen node wakes in the middle of its copy of the job: it finds the job is no
    // longer its own and stops, writing nothing to the record.
    c.nodes[i].thaw();
    tokio::time::sleep(LEASE * 2).await;
    let (_, after) = document(other, &id).await;
    assert_eq!(after, done, "the woken node changed the finished record");
    let indexed = total(&c.nodes, INDEXED).await;
    let reclaimed = total(&c.nodes, RECLAIMED).await;
    assert_eq!(
        (indexed, reclaimed),
        (1.0, 1.0),
        "indexed once, taken over once"
    );
    assert_eq!(c.redis.jobs_left().await, 0);
}

/// Waits for a parser to start under one of `nodes` and stops it there (SIGSTOP): the node
/// that runs the job and the parser's pid.
async fn freeze_a_parser(nodes: &[Node]) -> (usize, u32) {
    let t0 = Instant::now();
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(pid) = n.pid().and_then(|p| children(p).into_iter().next()) {
                signal("-STOP", pid);
                return (i, pid);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no parser started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_that_takes_two_nodes_down_while_parsing_is_failed_not_passed_on() {
    let mut c = nodes(3).await;
    let doc = upload_file(&c.nodes[0], "poison.html", deep_html()).await;
    let id = doc["id"].as_str().unwrap().to_string();
    for round in 1..=2 {
        let (i, parser) = freeze_a_parser(&c.nodes).await;
        let (_, d) = document(&c.nodes[(i + 1) % c.nodes.len()], &id).await;
        assert_eq!(d["status"], "parsing", "round {round}: {d}");
        // The node dies while parsing (as if the document took it down).
        c.nodes[i].kill();
        signal("-KILL", parser);
        c.nodes.remove(i);
    }
    let last = &mut c.nodes[0];
    let d = follow(last, &id, Duration::from_secs(30), settled).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted the server twice"),
        "{d}"
    );
    assert!(last.is_alive(), "the third node stays up");
    assert!(
        children(last.pid().unwrap()).is_empty(),
        "it does not parse the document again"
    );
    assert_eq!(c.redis.jobs_left().await, 0);
    // And it still serves uploads.
    let (_, ok) = upload(last, "Fine", "Still serving documents.").await;
    let ok = follow(
        last,
        ok["id"].as_str().unwrap(),
        Duration::from_secs(60),
        settled,
    )
    .await;
    assert_eq!(ok["status"], "indexed", "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_waiting_in_redis_are_bounded_cluster_wide_and_refused_past_it() {
    let html = deep_html();
    let limit = (html.len() + 1000).to_string();
    let held = (html.len() * 3 / 2).to_string();
    let env = [
        ("CONFAB__INGEST__MAX_UPLOAD_BYTES", limit.as_str()),
        ("CONFAB__CLUSTER__UPLOAD_BYTES", held.as_str()),
    ];
    let c = nodes_with(2, &env).await;
    let first = upload_file(&c.nodes[0], "one.html", html.clone()).await;
    let (_, parser) = freeze_a_parser(&c.nodes).await;
    // The first upload's bytes are held until its job ends: a second does not fit, on
    // either node, and is refused with a clear, retryable error.
    let mut second = html.clone();
    second.extend_from_slice(b"<!-- two -->");
    for n in &c.nodes {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(second.clone()).file_name("two.html"),
        );
        let r = reqwest::Client::new()
            .post(n.http("/v1/documents"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503, "{}", n.id);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "overloaded", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("cluster.upload_bytes"),
            "{body}"
        );
    }
    // Once the first job ends (its parser dies: failed), its bytes are given back and the
    // second fits.
    signal("-KILL", parser);
    let id = first["id"].as_str().unwrap();
    let done = follow(&c.nodes[1], id, Duration::from_secs(60), settled).await;
    assert_eq!(done["status"], "failed", "{done}");
    let two = upload_file(&c.nodes[1], "two.html", second).await;
    assert_eq!(two["status"], "queued", "{two}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_answer_cluster_unavailable_while_redis_hangs_and_recover_after() {
    let c = nodes(1).await;
    let n = &c.nodes[0];
    let (_, doc) = upload(n, "Kept", "Kept across a Redis pause.").await;
    let id = doc["id"].as_str().unwrap().to_string();
    follow(n, &id, Duration::from_secs(60), settled).await;
    c.redis.freeze(true);
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let calls = [
        http.get(n.http(&format!("/v1/documents/{id}"))),
        http.get(n.http("/v1/documents")),
        http.delete(n.http(&format!("/v1/documents/{id}"))),
        http.post(n.http("/v1/documents"))
            .json(&json!({"title": "New", "text": "Not now."})),
    ];
    for call in calls {
        let r = call.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "cluster_unavailable", "{body}");
        assert_eq!(body["retryable"], true, "{body}");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    c.redis.freeze(false);
    n.wait_ready(true).await;
    let (status, d) = document(n, &id).await;
    assert_eq!((status, &d["status"]), (200, &json!("indexed")), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_cut_by_a_redis_pause_runs_again_instead_of_failing_the_document() {
    // Small upsert batches: the job checks it holds its entry (a Redis call) after every
    // group of chunks it embeds, so a pause longer than one group is sure to meet one.
    let c = nodes_with(1, &[("CONFAB__INGEST__UPSERT_BATCH", "16")]).await;
    let n = &c.nodes[0];
    let (_, doc) = upload(n, "Manual", &long_text(1000)).await;
    let id = doc["id"].as_str().unwrap().to_string();
    follow(n, &id, Duration::from_secs(60), |d| {
        d["status"] == "embedding" && d["chunks_done"].as_u64() > Some(0)
    })
    .await;
    c.redis.freeze(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.redis.freeze(false);
    let done = follow(n, &id, Duration::from_secs(120), settled).await;
    assert_eq!(done["status"], "indexed", "{done}");
    assert_eq!(done["chunks"], done["chunks_total"], "{done}");
}
