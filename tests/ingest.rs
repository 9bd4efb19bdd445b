//! Document ingestion end to end over HTTP: real PDF, HTML and Markdown files through the
//! multipart upload, background jobs, status, list, versions, delete, type checks, hybrid
//! search, and a job cut by a shutdown that resumes at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, with_retrieval};
use confab_loadtest::mock::Behavior;
use serde_json::{Value, json};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn upload(srv: &TestServer, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(srv: &TestServer, path: &str) -> (u16, Value) {
    let resp = reqwest::get(srv.http(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls a document until indexed or failed.
async fn settled(srv: &TestServer, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (status, doc) = get(srv, &format!("/v1/documents/{id}")).await;
        assert_eq!(status, 200, "{doc}");
        if doc["status"] == "indexed" || doc["status"] == "failed" {
            return doc;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "stuck: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn search(srv: &TestServer, query: &str, mode: &str) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/search"))
        .json(&json!({"query": query, "mode": mode, "top_k": 5, "score_floor": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    body["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn real_documents_upload_list_status_version_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| {
        with_retrieval(c, &p);
        c.ingest.max_upload_bytes = 64 * 1024;
    })
    .await;

    // Three real documents and three bad PDFs, all accepted for processing at once.
    let mut ids = std::collections::HashMap::new();
    for (name, bytes) in [
        ("larkspur-manual.pdf", fixture("larkspur-manual.pdf")),
        ("greenhouse.html", fixture("greenhouse.html")),
        ("runbook.md", fixture("runbook.md")),
        ("encrypted.pdf", fixture("encrypted.pdf")),
        ("scanned.pdf", fixture("scanned.pdf")),
        (
            "corrupt.pdf",
            b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\ngarbage".to_vec(),
        ),
    ] {
        let (status, doc) = upload(&srv, name, bytes).await;
        assert_eq!(status, 202, "{name}: {doc}");
        assert_eq!(doc["status"], "queued");
        ids.insert(name, doc["id"].as_str().unwrap().to_string());
    }
    let mut done = std::collections::HashMap::new();
    for (name, id) in &ids {
        done.insert(*name, settled(&srv, id).await);
    }
    for name in ["larkspur-manual.pdf", "greenhouse.html", "runbook.md"] {
        let d = &done[name];
        assert_eq!(d["status"], "indexed", "{d}");
        assert!(d["chunks"].as_u64().unwrap() >= 1);
        assert_eq!(d["chunks_done"], d["chunks_total"]);
    }
    assert_eq!(done["larkspur-manual.pdf"]["kind"], "pdf");
    assert_eq!(done["greenhouse.html"]["kind"], "html");
    assert_eq!(done["greenhouse.html"]["title"], "Greenhouse care");
    assert_eq!(done["runbook.md"]["kind"], "markdown");
    let reason = |n: &str| done[n]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(done["encrypted.pdf"]["status"], "failed");
    assert!(
        reason("encrypted.pdf").contains("encrypted"),
        "{}",
        reason("encrypted.pdf")
    );
    assert!(
        reason("scanned.pdf").contains("no text layer"),
        "{}",
        reason("scanned.pdf")
    );
    assert!(
        reason("corrupt.pdf").contains("PDF"),
        "{}",
        reason("corrupt.pdf")
    );

    // List: every document with its state.
    let (_, list) = get(&srv, "/v1/documents").await;
    let list = list["documents"].as_array().unwrap();
    assert_eq!(list.len(), 6);
    assert_eq!(list.iter().filter(|d| d["status"] == "failed").count(), 3);

    // Citations point at the right place: page for the PDF, heading path for the others.
    let hits = search(
        &srv,
        "when are snapshots of the orchid collection taken?",
        "hybrid",
    )
    .await;
    assert_eq!(
        hits[0]["doc_id"],
        ids["larkspur-manual.pdf"].as_str(),
        "{hits:?}"
    );
    assert_eq!(hits[0]["page"], 2, "{hits:?}");
    let hits = search(&srv, "how often are the orchids watered", "dense").await;
    assert_eq!(
        hits[0]["doc_id"],
        ids["greenhouse.html"].as_str(),
        "{hits:?}"
    );
    assert_eq!(hits[0]["section"], "Greenhouse care");
    let hits = search(
        &srv,
        "what does the captain do when an engine fails",
        "hybrid",
    )
    .await;
    assert_eq!(
        hits[0]["section"], "Ferry runbook › Incidents › Engine failure",
        "{hits:?}"
    );
    // Boilerplate (scripts, navigation, footer, sidebar) was never indexed.
    for q in [
        "tracking-token-zebra",
        "newsletter subscribe",
        "Privacy Imprint",
        "Log in Shop",
    ] {
        assert!(
            search(&srv, q, "sparse")
                .await
                .iter()
                .all(|h| h["doc_id"] != ids["greenhouse.html"].as_str()),
            "{q} found in the HTML page"
        );
    }
    // Exact tokens: sparse finds the departure time.
    let hits = search(&srv, "06:40", "sparse").await;
    assert_eq!(hits[0]["doc_id"], ids["runbook.md"].as_str(), "{hits:?}");

    // Type by content: a PNG named .pdf is refused; so is an upload over the limit.
    let (status, body) = upload(&srv, "photo.pdf", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (415, Some("unsupported_document")),
        "{body}"
    );
    let (status, body) = upload(&srv, "big.txt", vec![b'a'; 200 * 1024]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("document_too_large")),
        "{body}"
    );

    // Malformed requests get the JSON error body too.
    let form = reqwest::multipart::Form::new().text("name", "no file");
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_message", "{body}");
    assert!(body["message"].as_str().unwrap().contains("file"), "{body}");
    let resp = reqwest::Client::new()
        .post(srv.http("/v1/documents"))
        .json(&json!({"title": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "invalid_message"
    );

    // The same bytes again: nothing queued, same version.
    let (status, again) = upload(&srv, "runbook.md", fixture("runbook.md")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["id"], &again["version"]),
        (&json!(ids["runbook.md"]), &json!(1))
    );

    // A new version replaces the old chunks.
    let v2 = String::from_utf8(fixture("runbook.md"))
        .unwrap()
        .replace("06:40", "07:15");
    let (status, doc) = upload(&srv, "runbook.md", v2.into_bytes()).await;
    assert_eq!(status, 202);
    assert_eq!(doc["version"], 2);
    let doc = settled(&srv, &ids["runbook.md"]).await;
    assert_eq!(
        (doc["status"].as_str(), doc["live_version"].as_u64()),
        (Some("indexed"), Some(2))
    );
    assert!(
        search(&srv, "06:40", "sparse")
            .await
            .iter()
            .all(|h| h["doc_id"] != ids["runbook.md"].as_str())
    );
    assert_eq!(
        search(&srv, "07:15", "sparse").await[0]["doc_id"],
        ids["runbook.md"].as_str()
    );

    // Delete: every chunk goes, the record goes, a second delete is a 404.
    let resp = reqwest::Client::new()
        .delete(srv.http(&format!("/v1/documents/{}", ids["runbook.md"])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, body) = get(&srv, &format!("/v1/documents/{}", ids["runbook.md"])).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    for mode in ["dense", "sparse", "hybrid"] {
        assert!(
            search(&srv, "ferry departures captain engine", mode)
                .await
                .iter()
                .all(|h| h["doc_id"] != ids["runbook.md"].as_str()),
            "{mode}"
        );
    }
    let resp = reqwest::Client::new()
        .delete(srv.http(&format!("/v1/documents/{}", ids["runbook.md"])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn a_job_cut_by_shutdown_is_never_half_searchable_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let mut srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| {
        with_retrieval(c, &p);
        c.ingest.embed_batch = 4;
        c.ingest.parallel_batches = 1;
    })
    .await;
    // ~300 chunks: long enough to catch the job half way.
    let text: String = (0..300)
        .map(|i| format!("Paragraph {i} about the quokka colony on island number {i}: the animals sleep by day, feed at night, and the rangers count them every spring with traps and notebooks in hand.\n\n"))
        .collect();
    let (status, doc) = upload(&srv, "quokkas.txt", text.into_bytes()).await;
    assert_eq!(status, 202);
    let id = doc["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let (_, d) = get(&srv, &format!("/v1/documents/{id}")).await;
        if d["status"] == "embedding" && d["chunks_done"].as_u64().unwrap_or(0) >= 8 {
            break;
        }
        assert_ne!(
            d["status"], "indexed",
            "the job finished before it could be cut"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "{d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Chunks written so far are pending: nothing of the document is searchable.
    assert!(
        search(&srv, "quokka colony rangers", "sparse")
            .await
            .is_empty()
    );
    assert!(
        search(&srv, "quokka colony rangers", "dense")
            .await
            .is_empty()
    );
    srv.shutdown.cancel();
    srv.running.take().unwrap().wait().await.unwrap();

    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| with_retrieval(c, &p)).await;
    let d = settled(&srv, &id).await;
    assert_eq!(d["status"], "indexed", "{d}");
    assert!(d["chunks"].as_u64().unwrap() >= 20, "{d}");
    let hits = search(&srv, "quokka colony island number 7", "hybrid").await;
    assert_eq!(hits[0]["doc_id"], id.as_str());
}

#[test]
fn chunks_fit_the_model_window_and_overlap() {
    use confab::ingest::Chunker;
    use confab::ingest::parse::{Block, Parsed};
    let tok = confab::config::EmbeddingConfig::default()
        .model_dir
        .join("tokenizer.json");
    let chunker = Chunker::new(&tok, 128, 24).unwrap();
    let sentence = |i: usize| {
        format!("Sentence {i} says that the pump in hall {i} was serviced on a rainy day.")
    };
    let long_para: String = (0..40).map(sentence).collect::<Vec<_>>().join(" ");
    let doc = Parsed {
        title: Some("Maintenance log".into()),
        blocks: vec![
            Block {
                headings: vec!["Pumps".into()],
                text: long_para,
                page: None,
            },
            Block {
                headings: vec!["Pumps".into()],
                text: "x".repeat(3000),
                page: None,
            },
            Block {
                headings: vec!["Valves".into()],
                text: "Valve 3 was replaced.".into(),
                page: None,
            },
        ],
    };
    let chunks = chunker.chunk("Maintenance log", &doc);
    assert!(chunks.len() > 4, "{}", chunks.len());
    for c in &chunks {
        assert!(
            chunker.count(&c.indexed) + 2 <= 128,
            "chunk {} has {} tokens",
            c.index,
            chunker.count(&c.indexed)
        );
        assert!(c.indexed.starts_with("Maintenance log › "), "{}", c.indexed);
    }
    // Consecutive chunks of one paragraph share their boundary sentence.
    let last_of_first = chunks[0].text.lines().last().unwrap();
    assert_eq!(chunks[1].text.lines().next(), Some(last_of_first));
    // Sections never mix, and keep their heading path.
    let valves: Vec<_> = chunks.iter().filter(|c| c.section == "Valves").collect();
    assert_eq!(valves.len(), 1);
    assert_eq!(valves[0].text, "Valve 3 was replaced.");
    assert_eq!(
        chunks.iter().map(|c| c.index).collect::<Vec<_>>(),
        (0..chunks.len()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn untitled_texts_do_not_replace_each_other_and_the_same_bytes_wait_for_their_job() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| with_retrieval(c, &p)).await;
    let post = |body: Value, wait: bool| {
        let url = srv.http(if wait {
            "/v1/documents?wait=true"
        } else {
            "/v1/documents"
        });
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (_, a) = post(
        json!({"title": "", "text": "Alpacas hum when they are curious."}),
        true,
    )
    .await;
    let (_, b) = post(
        json!({"title": " ", "text": "Beavers build dams from branches."}),
        true,
    )
    .await;
    assert_ne!(a["id"], b["id"]);
    assert!(a["name"].as_str().unwrap().starts_with("untitled-"), "{a}");
    let (_, list) = get(&srv, "/v1/documents").await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 2);
    // The same bytes while their job may still run: with wait=true the answer is the final state.
    let text: String = (0..60)
        .map(|i| format!("Line {i} about capybaras bathing in warm springs.\n\n"))
        .collect();
    let (s1, first) = post(json!({"title": "capybaras", "text": text}), false).await;
    assert_eq!(s1, 202);
    let (s2, again) = post(json!({"title": "capybaras", "text": text}), true).await;
    assert_eq!(
        (s2, again["status"].as_str()),
        (200, Some("indexed")),
        "{again}"
    );
    assert_eq!(
        (&again["id"], &again["version"]),
        (&first["id"], &first["version"])
    );
}

#[tokio::test]
async fn racing_versions_end_with_the_newest_and_only_it_is_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| with_retrieval(c, &p)).await;
    // Versions of one document uploaded back to back, each with a word of its own: jobs of
    // older versions are cancelled, skipped or refused at publish, never published last.
    let mut last = Value::Null;
    for v in 0..4 {
        let text: String = (0..40)
            .map(|i| format!("Paragraph {i} of the racing notes mentions zebrafish{v} twice, zebrafish{v}.\n\n"))
            .collect();
        let (status, doc) = upload(&srv, "race.md", text.into_bytes()).await;
        assert_eq!(status, 202, "{doc}");
        last = doc;
    }
    let id = last["id"].as_str().unwrap().to_string();
    let d = settled(&srv, &id).await;
    assert_eq!(
        (d["status"].as_str(), d["version"].as_u64()),
        (Some("indexed"), Some(4)),
        "{d}"
    );
    let newest = search(&srv, "zebrafish3", "sparse").await;
    assert!(!newest.is_empty() && newest.iter().all(|h| h["doc_id"] == id.as_str()));
    for old in 0..3 {
        let hits = search(&srv, &format!("zebrafish{old}"), "sparse").await;
        assert!(
            hits.is_empty(),
            "version {old} is still searchable: {hits:?}"
        );
    }
}
