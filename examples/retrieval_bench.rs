//! Retrieval benchmark (not a test): `cargo run --release --example retrieval_bench`.
//!
//! 1. Embedding throughput of the service (worker pool, queue, micro-batching) vs raw
//!    fastembed on the same texts with the same number of threads.
//! 2. Filtered top-10 search latency over 100k chunks in the embedded (qdrant-edge) store.
//!
//! Texts: the first N SciFact abstracts from ../shared/eval (evaluation data, read in place).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::time::{Duration, Instant};

use confab::config::{Config, VectorConfig};
use confab::embedding::{Embedder, ModelFiles, Priority};
use confab::vector::{ChunkPoint, VectorStore};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn texts(n: usize) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/eval/scifact/corpus.jsonl"
    );
    let file = std::fs::File::open(path).expect("../shared/eval/scifact/corpus.jsonl");
    std::io::BufReader::new(file)
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            v["text"].as_str().unwrap().chars().take(1000).collect()
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n_texts = arg("--texts", 512);
    let workers = arg("--workers", 2);
    let n_points = arg("--points", 100_000);
    let n_queries = arg("--queries", 2_000);
    let mut cfg = Config::default().embedding;
    cfg.workers = workers;
    let texts = texts(n_texts);
    println!(
        "== embedding: {n_texts} SciFact abstracts (≤1000 chars), {workers} threads, batch {}",
        cfg.max_batch
    );

    // Raw fastembed: one instance per thread, each embedding its share in batches.
    let files = ModelFiles::read(&cfg).expect("model assets (run scripts/fetch-models.sh)");
    let mut models: Vec<_> = (0..workers)
        .map(|_| files.instance(&cfg).unwrap())
        .collect();
    let warm: Vec<&str> = texts.iter().take(8).map(String::as_str).collect();
    for m in &mut models {
        m.embed(&warm, None).unwrap();
    }
    let per = n_texts.div_ceil(workers);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (m, part) in models.iter_mut().zip(texts.chunks(per)) {
            let batch = cfg.max_batch;
            s.spawn(move || {
                let refs: Vec<&str> = part.iter().map(String::as_str).collect();
                m.embed(&refs, Some(batch)).unwrap();
            });
        }
    });
    let raw = n_texts as f64 / t0.elapsed().as_secs_f64();
    drop(models);

    // The service: many concurrent requests of a few texts each, as ingestion and queries make.
    let emb = Embedder::start(&cfg).unwrap();
    emb.embed(texts.iter().take(8).cloned().collect(), Priority::Bulk)
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for piece in texts.chunks(4) {
        let e = emb.clone();
        let piece = piece.to_vec();
        tasks.push(tokio::spawn(async move {
            e.embed(piece, Priority::Bulk).await.unwrap().len()
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, n_texts);
    let svc = n_texts as f64 / t0.elapsed().as_secs_f64();
    println!("raw fastembed : {raw:8.1} texts/s");
    println!(
        "service       : {svc:8.1} texts/s   ratio {:.2} (goal >= 0.8)",
        svc / raw
    );
    drop(emb);

    // Search over n_points random unit vectors spread over 10 tenants.
    println!(
        "== search: {n_points} chunks, 10 tenants, top-10 with tenant filter, {n_queries} queries"
    );
    let dir = tempfile::tempdir().unwrap();
    let vcfg = VectorConfig {
        data_dir: dir.path().to_path_buf(),
        ..VectorConfig::default()
    };
    let store = VectorStore::open(&vcfg, 384).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut unit = move || {
        let v: Vec<f32> = (0..384).map(|_| rng.f32() - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let t0 = Instant::now();
    for start in (0..n_points).step_by(1_000) {
        let batch = (start..(start + 1_000).min(n_points))
            .map(|i| ChunkPoint {
                tenant: format!("t{}", i % 10),
                doc_id: format!("doc{}", i / 20),
                version: 1,
                chunk: i % 20,
                title: "bench".into(),
                section: String::new(),
                page: None,
                text: format!("chunk {i}"),
                vector: unit(),
                sparse: Default::default(),
                pending: false,
            })
            .collect();
        store.upsert(batch).await.unwrap();
    }
    println!(
        "upsert        : {:.1} s ({:.0} points/s)",
        t0.elapsed().as_secs_f64(),
        n_points as f64 / t0.elapsed().as_secs_f64()
    );
    for label in ["brute force (no HNSW yet)", "after optimize() (HNSW)"] {
        if label.starts_with("after") {
            let t = Instant::now();
            if let VectorStore::Edge(e) = &store {
                e.optimize().await.unwrap();
            }
            println!("optimize      : {:.1} s", t.elapsed().as_secs_f64());
        }
        let mut lat = Vec::with_capacity(n_queries);
        for q in 0..n_queries {
            let v = unit();
            let t = Instant::now();
            let hits = store
                .search(&format!("t{}", q % 10), v, 10, None)
                .await
                .unwrap();
            lat.push(t.elapsed());
            assert_eq!(hits.len(), 10);
        }
        lat.sort();
        println!(
            "search {label}: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms (goal p99 < 5 ms)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
}
