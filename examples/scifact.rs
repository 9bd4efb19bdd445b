//! Retrieval-quality benchmark on BEIR SciFact (not a test: it takes minutes).
//!
//!     cargo run --release --example scifact [-- --limit N]
//!
//! Ingests `../shared/eval/scifact/corpus.jsonl` through the real pipeline (the ingestion
//! service: Markdown parser, token-aware chunker, embedding service, qdrant-edge store, each
//! abstract uploaded as `# title` + text), runs the 300 test queries in dense, sparse and
//! hybrid mode, and prints nDCG@10 and recall@100 next to the published figures, plus
//! ingestion throughput. A document's rank is the rank of its best chunk.
//! The data is evaluation-only (CC BY-NC) and is read in place, never copied.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab::config::{Config, SearchMode};
use confab::ingest::{DocStatus, IngestSetup, Ingestor};
use confab::retrieval::Retrieval;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TENANT: &str = "scifact";

fn data(file: &str) -> std::io::BufReader<std::fs::File> {
    let path = format!(
        "{}/../shared/eval/scifact/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::io::BufReader::new(std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn jsonl(file: &str) -> Vec<serde_json::Value> {
    data(file)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn qrels() -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for line in data("qrels.tsv").lines().skip(1) {
        let line = line.unwrap();
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 3 && f[2].trim() != "0" {
            out.entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string());
        }
    }
    out
}

fn ndcg_at_10(ranked: &[String], relevant: &HashSet<String>) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .filter(|(_, d)| relevant.contains(*d))
        .map(|(i, _)| 1.0 / (i as f64 + 2.0).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(10))
        .map(|i| 1.0 / (i as f64 + 2.0).log2())
        .sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

fn recall_at_100(ranked: &[String], relevant: &HashSet<String>) -> f64 {
    let found = ranked
        .iter()
        .take(100)
        .filter(|d| relevant.contains(*d))
        .count();
    found as f64 / relevant.len().max(1) as f64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let limit = args
        .iter()
        .position(|a| a == "--limit")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.vector.data_dir = dir.path().to_path_buf();
    cfg.cache.enabled = false;
    cfg.ingest.queue_capacity = 10_000;
    // Trusted evaluation data, and this example is not the confab binary that parses in a
    // child process: parse in this process.
    cfg.ingest.isolate_parsing = false;
    let corpus: Vec<_> = jsonl("corpus.jsonl").into_iter().take(limit).collect();
    let queries = jsonl("queries.jsonl");
    let qrels = qrels();
    println!(
        "SciFact: {} documents, {} queries; embedding workers {}, ingest workers {}, chunk {} tokens (overlap {})",
        corpus.len(),
        queries.len(),
        cfg.embedding.workers,
        cfg.ingest.workers,
        cfg.ingest.chunk_tokens,
        cfg.ingest.overlap_tokens
    );

    let retrieval = Arc::new(Retrieval::start(&cfg).await.expect("model and store"));
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let ingest = Ingestor::start(
        retrieval.clone(),
        IngestSetup {
            cfg: cfg.ingest.clone(),
            data_dir: &cfg.vector.data_dir,
            tokenizer_json: &cfg.embedding.model_dir.join("tokenizer.json"),
            cluster: None,
        },
        stop.clone(),
        &tracker,
    )
    .await
    .unwrap();

    // Ingestion: upload everything, then wait for every job.
    let t0 = Instant::now();
    let mut by_uuid: HashMap<String, String> = HashMap::new();
    for d in &corpus {
        let id = d["_id"]
            .as_str()
            .or(d["id"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| d["id"].to_string());
        let body = format!(
            "# {}\n\n{}",
            d["title"].as_str().unwrap_or(""),
            d["text"].as_str().unwrap_or("")
        );
        let s = ingest
            .submit(
                TENANT,
                &format!("{id}.md"),
                Some("text/markdown"),
                body.into_bytes(),
            )
            .await
            .unwrap();
        by_uuid.insert(s.id.clone(), id);
    }
    let mut chunks = 0u64;
    let mut failed = 0;
    for uuid in by_uuid.keys() {
        let r = ingest
            .wait(TENANT, uuid, Duration::from_secs(3600))
            .await
            .unwrap()
            .expect("the document");
        match r.status {
            DocStatus::Indexed => chunks += u64::from(r.chunks),
            _ => failed += 1,
        }
    }
    let took = t0.elapsed().as_secs_f64();
    println!(
        "ingestion: {} documents ({failed} failed), {chunks} chunks in {took:.1} s: {:.1} documents/s, {:.1} chunks/s",
        by_uuid.len(),
        by_uuid.len() as f64 / took,
        chunks as f64 / took
    );

    // Evaluation.
    let published = [
        ("dense", 0.645, "all-MiniLM-L6-v2"),
        ("sparse", 0.679, "BM25 (Pyserini)"),
        ("hybrid", f64::NAN, "—"),
    ];
    println!("\n| mode | nDCG@10 | recall@100 | published nDCG@10 | p50 query ms |");
    println!("|---|---|---|---|---|");
    for (mode, (name, reference, model)) in
        [SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid]
            .into_iter()
            .zip(published)
    {
        let (mut ndcg, mut recall, mut n) = (0.0, 0.0, 0);
        let mut times = Vec::new();
        for q in &queries {
            let qid = q["_id"]
                .as_str()
                .or(q["id"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| q["id"].to_string());
            let Some(relevant) = qrels.get(&qid) else {
                continue;
            };
            let t = Instant::now();
            let found = retrieval
                .search(TENANT, q["text"].as_str().unwrap(), 300, -1.0, mode)
                .await
                .unwrap();
            times.push(t.elapsed());
            let mut seen = HashSet::new();
            let ranked: Vec<String> = found
                .hits
                .iter()
                .filter_map(|h| by_uuid.get(&h.doc_id))
                .filter(|d| seen.insert((*d).clone()))
                .cloned()
                .collect();
            ndcg += ndcg_at_10(&ranked, relevant);
            recall += recall_at_100(&ranked, relevant);
            n += 1;
        }
        times.sort();
        let p50 = times
            .get(times.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let reference = if reference.is_nan() {
            "—".to_string()
        } else {
            format!("{reference:.3} ({model})")
        };
        println!(
            "| {name} | {:.3} | {:.3} | {reference} | {p50:.1} |",
            ndcg / n as f64,
            recall / n as f64
        );
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
