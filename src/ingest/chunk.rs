//! Splitting text into overlapping, paragraph-aligned chunks sized for the embedding model.

/// A chunk of a document with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    pub text: String,
}

/// Packs paragraphs into chunks of at most `max_words` words, carrying the last `overlap`
/// words of a chunk into the next so a fact cut at a boundary is still found. A paragraph
/// longer than `max_words` is split on its own.
pub fn chunk_text(text: &str, max_words: usize, overlap: usize) -> Vec<Chunk> {
    let max_words = max_words.max(1);
    let overlap = overlap.min(max_words / 2);
    let mut chunks: Vec<Vec<&str>> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = para.split_whitespace().collect();
        if !cur.is_empty() && cur.len() + words.len() > max_words {
            let tail = cur[cur.len().saturating_sub(overlap)..].to_vec();
            chunks.push(std::mem::replace(&mut cur, tail));
        }
        for w in words {
            if cur.len() >= max_words {
                let tail = cur[cur.len().saturating_sub(overlap)..].to_vec();
                chunks.push(std::mem::replace(&mut cur, tail));
            }
            cur.push(w);
        }
    }
    if cur.len() > overlap || chunks.is_empty() && !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, words)| Chunk {
            index,
            text: words.join(" "),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_paragraphs_with_overlap() {
        let text = "one two three\n\nfour five six\n\nseven eight nine ten";
        let c = chunk_text(text, 6, 2);
        assert_eq!(c[0].text, "one two three four five six");
        assert!(c[1].text.starts_with("five six seven"), "{:?}", c);
        assert!(c.iter().all(|c| c.text.split_whitespace().count() <= 6));
    }

    #[test]
    fn short_text_is_one_chunk_and_empty_is_none() {
        assert_eq!(chunk_text("hello world", 100, 10).len(), 1);
        assert!(chunk_text("  \n\n ", 100, 10).is_empty());
    }
}
