//! Semantic-cache threshold calibration (not a test):
//! `cargo run --release --example cache_calibration`.
//!
//! Embeds the STS-B pairs in ../shared/eval/stsb (human similarity 0–5) with confab's
//! embedder and prints, per cosine threshold, how many pairs rated ≥ 4.5 would hit (wanted)
//! and how many rated ≤ 2.5 would hit (wrong answers served).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;

use confab::config::Config;
use confab::embedding::{Embedder, Priority};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[tokio::main]
async fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/eval/stsb/pairs.jsonl"
    );
    let file = std::fs::File::open(path).expect("../shared/eval/stsb/pairs.jsonl");
    let pairs: Vec<(f64, String, String)> = std::io::BufReader::new(file)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            (
                v["score"].as_f64().unwrap(),
                v["sentence1"].as_str().unwrap().to_string(),
                v["sentence2"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let emb = Embedder::start(&Config::default().embedding).expect("model assets");
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.1.clone(), p.2.clone()])
        .collect();
    let t0 = std::time::Instant::now();
    let vecs = emb.embed(texts, Priority::Bulk).await.unwrap();
    let sims: Vec<(f64, f32)> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.0, cosine(&vecs[2 * i], &vecs[2 * i + 1])))
        .collect();
    let high: Vec<f32> = sims.iter().filter(|s| s.0 >= 4.5).map(|s| s.1).collect();
    let low: Vec<f32> = sims.iter().filter(|s| s.0 <= 2.5).map(|s| s.1).collect();
    println!(
        "{} pairs embedded in {:.1} s; {} rated >= 4.5 (should hit), {} rated <= 2.5 (must not)",
        pairs.len(),
        t0.elapsed().as_secs_f64(),
        high.len(),
        low.len()
    );
    println!("| threshold | hit rate (>= 4.5) | false-hit rate (<= 2.5) |");
    println!("|---|---|---|");
    let mut t = 0.80f32;
    while t <= 0.981 {
        let hit = high.iter().filter(|s| **s >= t).count() as f64 / high.len() as f64;
        let false_hit = low.iter().filter(|s| **s >= t).count() as f64 / low.len() as f64;
        println!(
            "| {t:.2} | {:.1}% | {:.2}% |",
            hit * 100.0,
            false_hit * 100.0
        );
        t += 0.01;
    }
}
