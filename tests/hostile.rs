//! Hostile uploads against a running server: deep nesting, heading amplification, a PDF
//! whose form XObject draws itself, a decompression bomb. The server stays up, answers the
//! next request, fails each document with a reason, and restarts cleanly. And a job that
//! dies with the server twice (kill -9 while it parses, twice) is failed at the next start
//! instead of taking the server down again: no crash loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use confab_loadtest::mock::Behavior;
use serde_json::Value;

use common::hostile::{children, decompression_bomb, deep_html, signal, xobject_cycle};
use common::{TestServer, with_retrieval};

/// One 2 MB heading over two million short paragraphs.
fn heading_amplifier() -> Vec<u8> {
    let mut md = format!("# {}\n\n", "h".repeat(2 << 20));
    md.push_str(&"p\n\n".repeat(2_000_000));
    md.into_bytes()
}

// --- a server in this process ------------------------------------------------------------

async fn upload(base: &str, name: &str, bytes: Vec<u8>) -> Value {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/documents"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{name}");
    resp.json().await.unwrap()
}

async fn document(base: &str, id: &str) -> Value {
    let resp = reqwest::get(format!("{base}/v1/documents/{id}"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

/// Polls a document until it is indexed or failed.
async fn settled(base: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let doc = document(base, id).await;
        if doc["status"] == "indexed" || doc["status"] == "failed" {
            return doc;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "stuck: {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn healthy(base: &str) {
    let resp = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

fn hostile(c: &mut confab::config::Config, dir: &std::path::Path) {
    with_retrieval(c, dir);
    c.ingest.parse_timeout_ms = 20_000;
    c.ingest.parse_memory_bytes = 512 << 20;
}

#[tokio::test]
async fn hostile_uploads_fail_alone_and_the_server_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| hostile(c, &p)).await;
    let base = srv.http("");
    let docs = [
        ("cycle.pdf", xobject_cycle()),
        ("bomb.pdf", decompression_bomb()),
        ("nested.html", deep_html()),
        ("amplifier.md", heading_amplifier()),
    ];
    let mut ids = Vec::new();
    for (name, bytes) in docs {
        ids.push((
            name,
            upload(&base, name, bytes).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    let mut outcome = std::collections::HashMap::new();
    for (name, id) in &ids {
        let d = settled(&base, id).await;
        healthy(&base).await;
        outcome.insert(*name, d);
    }
    let reason = |n: &str| outcome[n]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(outcome["cycle.pdf"]["status"], "failed");
    assert!(
        reason("cycle.pdf").contains("pdf parser"),
        "{}",
        reason("cycle.pdf")
    );
    assert_eq!(outcome["bomb.pdf"]["status"], "failed");
    assert!(
        reason("bomb.pdf").contains("inflate past"),
        "{}",
        reason("bomb.pdf")
    );
    assert_eq!(outcome["amplifier.md"]["status"], "failed");
    assert!(
        reason("amplifier.md").contains("bytes of text"),
        "{}",
        reason("amplifier.md")
    );
    // Deep nesting either parses (the walk is iterative) or runs out of parse time.
    let nested = &outcome["nested.html"];
    assert!(
        nested["status"] == "indexed" || reason("nested.html").contains("longer than"),
        "{nested}"
    );

    // The server still does its job.
    let ok = upload(&base, "fine.md", b"# Fine\n\nA normal document.".to_vec()).await;
    assert_eq!(
        settled(&base, ok["id"].as_str().unwrap()).await["status"],
        "indexed"
    );

    // A restart finds every hostile job ended: nothing runs again, the records say why.
    let mut srv = srv;
    srv.shutdown.cancel();
    srv.running.take().unwrap().wait().await.unwrap();
    let p = dir.path().to_path_buf();
    let srv = TestServer::start_with(Behavior::text(&["ok"]), move |c| hostile(c, &p)).await;
    let base = srv.http("");
    for (name, id) in &ids {
        let d = document(&base, id).await;
        assert_eq!(d["status"], outcome[name]["status"], "{name}: {d}");
    }
    healthy(&base).await;
}

// --- the real binary, killed -------------------------------------------------------------

/// The confab binary serving `dir` on a port of its own.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("confab.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:{port}\"\n[auth]\ndev_mode = true\n\
                 [vector]\ndata_dir = \"{}\"\n[embedding]\nworkers = 1\n\
                 [ingest]\nparse_timeout_ms = 120000\n[log]\nlevel = \"warn\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.base)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the server exited"
            );
            assert!(t0.elapsed() < Duration::from_secs(60), "not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the server's parsing child, and stops it where it stands (SIGSTOP).
    async fn freeze_parser(&self) -> u32 {
        let t0 = Instant::now();
        loop {
            if let Some(pid) = children(self.child.id()).into_iter().next() {
                signal("-STOP", pid);
                return pid;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no parser started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill(mut self) {
        signal("-KILL", self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_job_that_dies_with_the_server_twice_is_failed_at_the_next_start() {
    // No server in this process to install reqwest's crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server::start(dir.path());
    srv.ready().await;
    let doc = upload(&srv.base, "slow.html", deep_html()).await;
    let id = doc["id"].as_str().unwrap().to_string();
    for round in 1..=2 {
        let parser = srv.freeze_parser().await;
        assert_eq!(
            document(&srv.base, &id).await["status"],
            "parsing",
            "round {round}"
        );
        srv.kill();
        signal("-KILL", parser);
        srv = Server::start(dir.path());
        srv.ready().await;
    }
    // Two interrupted parses: failed for good, and the server is up.
    let d = document(&srv.base, &id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted the server twice"),
        "{d}"
    );
    assert!(
        children(srv.child.id()).is_empty(),
        "nothing parses it again"
    );
    let ok = upload(&srv.base, "fine.md", b"# Fine\n\nStill serving.".to_vec()).await;
    assert_eq!(
        settled(&srv.base, ok["id"].as_str().unwrap()).await["status"],
        "indexed"
    );
    srv.kill();
}
