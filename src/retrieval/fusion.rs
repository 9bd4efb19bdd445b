//! Reciprocal rank fusion of a dense and a sparse result list. Every fused hit is scored by
//! cosine similarity (sparse-only hits carry their dense vector for this), so one score floor
//! means the same thing in every mode.

use std::collections::HashMap;

use crate::vector::{Hit, SparseHit};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Fuses the two lists: each hit gets Σ 1/(k + rank) over the lists it appears in; hits below
/// `floor` (cosine) are dropped; best fused first.
pub fn rrf(query: &[f32], dense: Vec<Hit>, sparse: Vec<SparseHit>, k: f32, floor: f32) -> Vec<Hit> {
    let mut fused: HashMap<(String, usize), (f32, Hit)> = HashMap::new();
    for (rank, hit) in dense.into_iter().enumerate() {
        let key = (hit.doc_id.clone(), hit.chunk);
        fused.entry(key).or_insert((0.0, hit)).0 += 1.0 / (k + rank as f32 + 1.0);
    }
    for (rank, sh) in sparse.into_iter().enumerate() {
        let key = (sh.hit.doc_id.clone(), sh.hit.chunk);
        let entry = fused.entry(key).or_insert_with(|| {
            let mut hit = sh.hit;
            hit.score = sh.dense.as_deref().map_or(0.0, |d| cosine(query, d));
            (0.0, hit)
        });
        entry.0 += 1.0 / (k + rank as f32 + 1.0);
    }
    let mut out: Vec<(f32, Hit)> = fused
        .into_values()
        .filter(|(_, h)| h.score >= floor)
        .collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.score.total_cmp(&a.1.score)));
    out.into_iter().map(|(_, h)| h).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk: 0,
            title: String::new(),
            section: String::new(),
            page: None,
            text: doc.into(),
            score,
        }
    }

    #[test]
    fn agreement_wins_and_the_floor_holds() {
        let q = [1.0, 0.0];
        let dense = vec![hit("a", 0.9), hit("b", 0.8)];
        let sparse = vec![
            SparseHit {
                hit: hit("b", 12.0),
                dense: Some(vec![0.8, 0.6]),
            },
            SparseHit {
                hit: hit("c", 9.0),
                dense: Some(vec![0.6, 0.8]),
            },
            SparseHit {
                hit: hit("d", 5.0),
                dense: Some(vec![0.0, 1.0]),
            },
        ];
        let out = rrf(&q, dense, sparse, 60.0, 0.5);
        let ids: Vec<_> = out.iter().map(|h| h.doc_id.as_str()).collect();
        // b is in both lists; d is orthogonal to the query and falls under the floor.
        assert_eq!(ids, ["b", "a", "c"]);
        assert!(
            (out[2].score - 0.6).abs() < 1e-6,
            "sparse-only hits are scored by cosine"
        );
        assert!(
            (out[0].score - 0.8).abs() < 1e-6,
            "dense hits keep their store score"
        );
    }
}
