//! Semantic-cache calibration (not a test): `cargo run --release --example cache_calibration`.
//!
//! Builds an evaluation set from the STS-B pairs in ../shared/eval/stsb (read at run time,
//! never copied: its texts carry their sources' licences) and measures, for the similarity
//! floor and each `cache.semantic` mode, how often the semantic layer would serve a cached
//! answer:
//! - must miss (same words, another meaning), generated from each pair's first sentence:
//!   `negation` (a "not" inserted or removed), `numbers` (a number changed), `order` (the
//!   arguments of "of", "to", "from", "than" swapped), `antonym` (a word replaced by its
//!   opposite, from a list of common pairs independent of the checker's), `entity` (a name
//!   replaced by another);
//! - should hit: `stsb` (STS-B pairs rated ≥ 4.5), `case_punct` (lower-cased, end
//!   punctuation changed), `reorder` (a trailing "in/on/at …" phrase moved to the front).
//!
//! `FLOORS=0.85,0.9` picks the floors printed; the set is written to cache-eval.jsonl in
//! the target dir for inspection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};

use confab::cache::{SemanticMode, Signature, check};
use confab::config::Config;
use confab::embedding::{Embedder, Priority};

/// Cases per generated class.
const PER_CLASS: usize = 300;

/// Opposites for generating the `antonym` class (common English pairs; deliberately not
/// the checker's list, so the class measures more than the list itself).
const OPPOSITES: &[(&str, &str)] = &[
    ("up", "down"),
    ("in", "out"),
    ("on", "off"),
    ("open", "closed"),
    ("big", "small"),
    ("large", "small"),
    ("old", "young"),
    ("old", "new"),
    ("black", "white"),
    ("hot", "cold"),
    ("fast", "slow"),
    ("long", "short"),
    ("tall", "short"),
    ("high", "low"),
    ("happy", "sad"),
    ("front", "back"),
    ("left", "right"),
    ("inside", "outside"),
    ("above", "below"),
    ("before", "after"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("day", "night"),
    ("early", "late"),
    ("first", "last"),
    ("full", "empty"),
    ("wet", "dry"),
    ("light", "dark"),
    ("rises", "falls"),
    ("wins", "loses"),
    ("buys", "sells"),
    ("increase", "decrease"),
    ("more", "less"),
    ("stands", "sits"),
    ("enters", "leaves"),
    ("pushes", "pulls"),
    ("north", "south"),
    ("east", "west"),
    ("dead", "alive"),
    ("rich", "poor"),
    ("hard", "soft"),
];

const NAMES: &[&str] = &[
    "Austria",
    "Australia",
    "Canada",
    "Chile",
    "China",
    "Egypt",
    "France",
    "Germany",
    "India",
    "Iran",
    "Iraq",
    "Israel",
    "Japan",
    "Kenya",
    "Mexico",
    "Nigeria",
    "Norway",
    "Peru",
    "Russia",
    "Spain",
    "Sweden",
    "Syria",
    "Turkey",
    "Obama",
    "Merkel",
    "Putin",
    "London",
    "Paris",
    "Berlin",
    "Tokyo",
    "Microsoft",
    "Google",
    "Apple",
    "Toyota",
];

const NUMBER_SWAPS: &[(&str, &str)] = &[
    ("one", "two"),
    ("two", "three"),
    ("three", "four"),
    ("four", "five"),
    ("five", "six"),
    ("six", "seven"),
    ("seven", "eight"),
    ("eight", "nine"),
    ("nine", "ten"),
    ("ten", "three"),
];

const AUX: &[&str] = &[
    "is", "are", "was", "were", "can", "will", "has", "have", "does", "do", "did",
];

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The bare word of a token (punctuation off) and what was around it.
fn bare(t: &str) -> (&str, &str, &str) {
    let start = t.find(|c: char| c.is_alphanumeric()).unwrap_or(t.len());
    let end = t
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(start, |(i, c)| i + c.len_utf8())
        .max(start);
    (&t[..start], &t[start..end], &t[end..])
}

fn negation(s: &str) -> Option<String> {
    let mut t = tokens(s);
    if let Some(i) = t.iter().position(|w| bare(w).1.eq_ignore_ascii_case("not")) {
        t.remove(i);
        return Some(t.join(" "));
    }
    let i = t
        .iter()
        .position(|w| AUX.contains(&bare(w).1.to_lowercase().as_str()))?;
    (i + 1 < t.len()).then(|| {
        t.insert(i + 1, "not".into());
        t.join(" ")
    })
}

fn numbers(s: &str) -> Option<String> {
    let mut t = tokens(s);
    for w in t.iter_mut() {
        let (pre, word, post) = bare(w);
        let changed = if word.chars().all(|c| c.is_ascii_digit()) && !word.is_empty() {
            let n: u64 = word.parse().ok()?;
            Some(if n >= 10 {
                (n / 10).to_string()
            } else {
                (n * 10 + 5).to_string()
            })
        } else {
            let lower = word.to_lowercase();
            NUMBER_SWAPS
                .iter()
                .find(|(a, _)| *a == lower)
                .map(|(_, b)| b.to_string())
        };
        if let Some(c) = changed {
            *w = format!("{pre}{c}{post}");
            return Some(t.join(" "));
        }
    }
    None
}

const SKIP: &[&str] = &[
    "a", "an", "the", "of", "to", "from", "than", "is", "are", "his", "her", "its", "their",
];

fn order(s: &str) -> Option<String> {
    let mut t = tokens(s);
    let i = t
        .iter()
        .position(|w| ["of", "to", "from", "than"].contains(&bare(w).1))?;
    let l = (0..i)
        .rev()
        .find(|&j| !SKIP.contains(&bare(&t[j]).1.to_lowercase().as_str()))?;
    let r = (i + 1..t.len()).find(|&j| !SKIP.contains(&bare(&t[j]).1.to_lowercase().as_str()))?;
    let (lw, rw) = (bare(&t[l]).1.to_string(), bare(&t[r]).1.to_string());
    if lw.eq_ignore_ascii_case(&rw) || lw.is_empty() || rw.is_empty() {
        return None;
    }
    t[l] = t[l].replacen(&lw, &rw, 1);
    t[r] = t[r].replacen(&rw, &lw, 1);
    Some(t.join(" "))
}

fn antonym(s: &str) -> Option<String> {
    let mut t = tokens(s);
    for w in t.iter_mut() {
        let (pre, word, post) = bare(w);
        let lower = word.to_lowercase();
        let swap = OPPOSITES
            .iter()
            .find_map(|(a, b)| (lower == *a).then_some(*b).or((lower == *b).then_some(*a)));
        if let Some(o) = swap {
            *w = format!("{pre}{o}{post}");
            return Some(t.join(" "));
        }
    }
    None
}

fn entity(s: &str, k: usize) -> Option<String> {
    let mut t = tokens(s);
    for w in t.iter_mut().skip(1) {
        let (pre, word, post) = bare(w);
        if word.chars().next().is_some_and(char::is_uppercase) && word.len() > 2 {
            let other = NAMES.iter().cycle().skip(k).find(|n| **n != word)?;
            *w = format!("{pre}{other}{post}");
            return Some(t.join(" "));
        }
    }
    None
}

fn case_punct(s: &str) -> Option<String> {
    let lower = s.to_lowercase();
    let trimmed = lower.trim_end_matches(['.', '!', '?']).trim();
    (trimmed != s).then(|| trimmed.to_string())
}

fn reorder(s: &str) -> Option<String> {
    let t = tokens(s.trim_end_matches('.'));
    let i = t
        .iter()
        .rposition(|w| ["in", "on", "at"].contains(&w.as_str()))?;
    if i < 3 || t.len() - i > 5 || t.len() - i < 2 {
        return None;
    }
    let capital = |s: String, up: bool| {
        let mut c = s.chars();
        let first: String = c.next().map_or_else(String::new, |f| {
            if up {
                f.to_uppercase().collect()
            } else {
                f.to_lowercase().collect()
            }
        });
        first + c.as_str()
    };
    let phrase = capital(t[i..].join(" "), true);
    let rest = capital(t[..i].join(" "), false);
    Some(format!("{phrase}, {rest}."))
}

fn load() -> Vec<(f64, String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/eval/stsb/pairs.jsonl"
    );
    let file = std::fs::File::open(path).expect("../shared/eval/stsb/pairs.jsonl");
    std::io::BufReader::new(file)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (v["score"].as_f64().unwrap(), s("sentence1"), s("sentence2"))
        })
        .collect()
}

type Gen = fn(&str) -> Option<String>;

/// A class of the set: its name, whether its pairs should hit, its (cached, asked) pairs.
type Class = (&'static str, bool, Vec<(String, String)>);

/// (class, must hit, pairs).
fn build(pairs: &[(f64, String, String)]) -> Vec<Class> {
    let gens: [(&str, bool, Gen); 6] = [
        ("negation", false, negation),
        ("numbers", false, numbers),
        ("order", false, order),
        ("antonym", false, antonym),
        ("case_punct", true, case_punct),
        ("reorder", true, reorder),
    ];
    let mut classes: Vec<Class> = gens
        .iter()
        .map(|(name, hit, g)| {
            let made: Vec<(String, String)> = pairs
                .iter()
                .filter_map(|p| g(&p.1).map(|b| (p.1.clone(), b)))
                .take(PER_CLASS)
                .collect();
            (*name, *hit, made)
        })
        .collect();
    let entities: Vec<(String, String)> = pairs
        .iter()
        .enumerate()
        .filter_map(|(k, p)| entity(&p.1, k).map(|b| (p.1.clone(), b)))
        .take(PER_CLASS)
        .collect();
    classes.push(("entity", false, entities));
    let stsb: Vec<(String, String)> = pairs
        .iter()
        .filter(|p| p.0 >= 4.5)
        .map(|p| (p.1.clone(), p.2.clone()))
        .collect();
    classes.push(("stsb", true, stsb));
    classes
}

#[tokio::main]
async fn main() {
    let pairs = load();
    let classes = build(&pairs);
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let path = format!("{dir}/cache-eval.jsonl");
    let mut out = std::fs::File::create(&path).unwrap();
    let mut texts: Vec<String> = Vec::new();
    for (class, hit, cases) in &classes {
        for (a, b) in cases {
            writeln!(
                out,
                "{}",
                serde_json::json!({"class": class, "should_hit": hit, "cached": a, "asked": b})
            )
            .unwrap();
            texts.push(a.clone());
            texts.push(b.clone());
        }
    }
    let emb = Embedder::start(&Config::default().embedding).expect("model assets");
    let t0 = std::time::Instant::now();
    let vecs = emb.embed(texts, Priority::Bulk).await.unwrap();
    println!(
        "{} sentences embedded in {:.1} s",
        vecs.len(),
        t0.elapsed().as_secs_f64()
    );
    let floors: Vec<f32> = std::env::var("FLOORS")
        .unwrap_or_else(|_| "0.80,0.85,0.88,0.92".into())
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .collect();
    let modes = [
        ("vector only", None),
        ("strict", Some(SemanticMode::Strict)),
        ("balanced", Some(SemanticMode::Balanced)),
    ];
    println!(
        "\n| floor | mode | {} | false hits (must miss) | hits (should hit) |",
        classes.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}---|---|", "---|".repeat(classes.len()));
    for floor in &floors {
        for (mode_name, mode) in modes {
            let mut cells = Vec::new();
            let (mut fh, mut miss_n, mut h, mut hit_n) = (0usize, 0usize, 0usize, 0usize);
            let mut k = 0;
            for (class, should_hit, cases) in &classes {
                let mut served = 0;
                for (a, b) in cases {
                    let sim = cosine(&vecs[2 * k], &vecs[2 * k + 1]);
                    k += 1;
                    let passes =
                        mode.is_none_or(|m| check(&Signature::of(a), &Signature::of(b), m).is_ok());
                    if sim >= *floor && passes {
                        served += 1;
                        let show = std::env::var("SHOW").unwrap_or_default();
                        if mode_name == "balanced" && show == *class && served <= 8 {
                            eprintln!("served {class} at {floor}: {a} || {b}");
                        }
                    }
                }
                let rate = 100.0 * served as f64 / cases.len().max(1) as f64;
                cells.push(format!("{rate:.1}% ({})", cases.len()));
                if *should_hit {
                    h += served;
                    hit_n += cases.len();
                } else {
                    fh += served;
                    miss_n += cases.len();
                }
            }
            println!(
                "| {floor:.2} | {mode_name} | {} | {:.2}% | {:.1}% |",
                cells.join(" | "),
                100.0 * fh as f64 / miss_n.max(1) as f64,
                100.0 * h as f64 / hit_n.max(1) as f64
            );
        }
    }
}
