//! `confab ingest`: uploads files and folders to a running server, follows each job with a
//! progress bar and prints a summary (documents, chunks, failures with reasons).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Extensions picked up inside folders (files named explicitly are always sent; the server
/// decides by content).
const EXTENSIONS: &[&str] = &["txt", "text", "md", "markdown", "html", "htm", "pdf"];

/// Files to send, each with the name it is stored under (its path below the folder given).
fn collect(paths: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in walkdir::WalkDir::new(p)
                .sort_by_file_name()
                .into_iter()
                .flatten()
            {
                let ext = e
                    .path()
                    .extension()
                    .and_then(|x| x.to_str())
                    .map(str::to_ascii_lowercase);
                if e.file_type().is_file() && ext.is_some_and(|x| EXTENSIONS.contains(&x.as_str()))
                {
                    let rel = e.path().strip_prefix(p).unwrap_or(e.path());
                    out.push((e.path().to_path_buf(), rel.to_string_lossy().into_owned()));
                }
            }
        } else {
            let name = p.file_name().map_or_else(
                || p.to_string_lossy().into_owned(),
                |n| n.to_string_lossy().into_owned(),
            );
            out.push((p.clone(), name));
        }
    }
    out
}

struct Outcome {
    name: String,
    status: String,
    chunks: u64,
    error: Option<String>,
}

async fn upload(
    client: &reqwest::Client,
    server: &str,
    path: &Path,
    name: &str,
) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("name", name.to_string());
    let resp = client
        .post(format!("{server}/v1/documents"))
        .multipart(form)
        .send()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("bad answer ({status}): {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(body["message"]
            .as_str()
            .unwrap_or("upload refused")
            .to_string())
    }
}

/// Polls a document until its job ends, moving the bar with its progress.
async fn follow(
    client: &reqwest::Client,
    server: &str,
    mut doc: Value,
    bar: &ProgressBar,
) -> Value {
    let id = doc["id"].as_str().unwrap_or_default().to_string();
    loop {
        let status = doc["status"].as_str().unwrap_or("failed");
        if status == "indexed" || status == "failed" {
            return doc;
        }
        bar.set_message(format!(
            "{} {status} {}/{}",
            doc["name"].as_str().unwrap_or(""),
            doc["chunks_done"],
            doc["chunks_total"]
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        match client
            .get(format!("{server}/v1/documents/{id}"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                if let Ok(v) = r.json().await {
                    doc = v;
                }
            }
            Ok(r) => {
                return serde_json::json!({"status": "failed", "error": format!("status check answered {}", r.status())});
            }
            Err(e) => {
                return serde_json::json!({"status": "failed", "error": format!("status check failed: {e}")});
            }
        }
    }
}

/// The client, sending the tenant's key with every request when there is one.
fn client(api_key: Option<&str>) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| "the API key has characters a header cannot carry".to_string())?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())
}

pub fn run(server: &str, paths: &[PathBuf], api_key: Option<&str>) -> ExitCode {
    let server = server.trim_end_matches('/').to_string();
    let files = collect(paths);
    if files.is_empty() {
        eprintln!(
            "confab ingest: no files found (folders are searched for {})",
            EXTENSIONS.join(", ")
        );
        return ExitCode::from(2);
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("confab ingest: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match client(api_key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab ingest: {e}");
            return ExitCode::from(2);
        }
    };
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} documents  {elapsed}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let outcomes: Vec<Outcome> = rt.block_on(async {
        let mut out = Vec::new();
        for (path, name) in &files {
            bar.set_message(format!("{name} uploading"));
            let result = match upload(&client, &server, path, name).await {
                Ok(doc) => follow(&client, &server, doc, &bar).await,
                Err(e) => serde_json::json!({"status": "failed", "error": e}),
            };
            out.push(Outcome {
                name: name.clone(),
                status: result["status"].as_str().unwrap_or("failed").to_string(),
                chunks: result["chunks"].as_u64().unwrap_or(0),
                error: result["error"].as_str().map(str::to_string),
            });
            bar.inc(1);
        }
        out
    });
    bar.finish_and_clear();
    let took = t0.elapsed().as_secs_f64();
    let indexed: Vec<_> = outcomes.iter().filter(|o| o.status == "indexed").collect();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != "indexed").collect();
    let chunks: u64 = indexed.iter().map(|o| o.chunks).sum();
    println!(
        "{} documents: {} indexed ({chunks} chunks), {} failed, in {took:.1} s ({:.1} documents/s)",
        outcomes.len(),
        indexed.len(),
        failed.len(),
        outcomes.len() as f64 / took.max(1e-9)
    );
    for f in &failed {
        println!(
            "  failed  {}: {}",
            f.name,
            f.error.as_deref().unwrap_or("unknown error")
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
