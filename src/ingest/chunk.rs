//! Structure-aware, token-sized chunks. A chunk never spans two sections (heading paths) or
//! two PDF pages;
//! inside a section, paragraphs are packed up to the embedding model's window, measured with
//! the model's own tokenizer, and the last sentences of a chunk are repeated at the start of
//! the next so a fact cut at a boundary is still found. Every chunk is embedded with its
//! title and heading path in front, and keeps them for citations.

use std::path::Path;

use tokenizers::Tokenizer;

use super::IngestError;
use super::parse::{Block, Parsed};

/// A chunk of a document with its place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    /// Heading path, " › "-joined; empty when the document has none.
    pub section: String,
    pub page: Option<u32>,
    /// The chunk's own text (shown in citations).
    pub text: String,
    /// What is embedded and indexed: title and section, then the text.
    pub indexed: String,
}

/// Splits parsed documents; cheap to share between threads.
pub struct Chunker {
    tokenizer: Tokenizer,
    /// Tokens per chunk, special tokens included.
    max_tokens: usize,
    overlap: usize,
}

/// A piece of text no larger than the budget, with its token count.
struct Unit {
    text: String,
    tokens: usize,
    page: Option<u32>,
}

/// [CLS] and [SEP] around every embedded text.
const SPECIAL_TOKENS: usize = 2;

impl Chunker {
    /// Loads `tokenizer.json` of the embedding model.
    pub fn new(
        tokenizer_json: &Path,
        max_tokens: usize,
        overlap: usize,
    ) -> Result<Self, IngestError> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_json).map_err(|e| {
            IngestError::Internal(format!("cannot load {}: {e}", tokenizer_json.display()))
        })?;
        // Counting needs every token: no truncation, no padding.
        tokenizer
            .with_truncation(None)
            .map_err(|e| IngestError::Internal(format!("tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            max_tokens,
            overlap,
        })
    }

    /// Tokens in `text` (without special tokens).
    pub fn count(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.len())
            // A text the tokenizer refuses is sized by a safe over-estimate.
            .unwrap_or_else(|_| text.len())
    }

    /// The document's chunks, in order.
    pub fn chunk(&self, title: &str, doc: &Parsed) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < doc.blocks.len() {
            let (headings, page) = (&doc.blocks[i].headings, doc.blocks[i].page);
            let end = doc.blocks[i..]
                .iter()
                .position(|b| &b.headings != headings || b.page != page)
                .map_or(doc.blocks.len(), |n| i + n);
            self.section(title, &doc.blocks[i..end], &mut out);
            i = end;
        }
        out
    }

    fn section(&self, title: &str, blocks: &[Block], out: &mut Vec<Chunk>) {
        let section = blocks
            .first()
            .map(|b| b.headings.join(" › "))
            .unwrap_or_default();
        let prefix = match (title.is_empty(), section.is_empty()) {
            (false, false) if section != title => format!("{title} › {section}"),
            (false, _) => title.to_string(),
            (true, _) => section.clone(),
        };
        // A very long title may take at most half the window.
        let budget = self
            .max_tokens
            .saturating_sub(SPECIAL_TOKENS + self.count(&prefix))
            .max(self.max_tokens / 2);
        let units: Vec<Unit> = blocks
            .iter()
            .flat_map(|b| self.units(&b.text, b.page, budget))
            .collect();
        let mut cur: Vec<&Unit> = Vec::new();
        let mut cur_tokens = 0;
        let emit = |cur: &[&Unit], out: &mut Vec<Chunk>| {
            let text = cur
                .iter()
                .map(|u| u.text.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            out.push(Chunk {
                index: out.len(),
                section: section.clone(),
                page: cur.first().and_then(|u| u.page),
                indexed: if prefix.is_empty() {
                    text.clone()
                } else {
                    format!("{prefix}\n{text}")
                },
                text,
            });
        };
        let mut fresh = 0; // units in `cur` not yet emitted in a previous chunk
        for u in &units {
            if !cur.is_empty() && cur_tokens + u.tokens > budget {
                emit(&cur, out);
                // Carry the tail (whole units, at most `overlap` tokens) into the next chunk.
                let mut keep = 0;
                let mut kept_tokens = 0;
                for v in cur.iter().rev() {
                    if kept_tokens + v.tokens > self.overlap || keep + 1 >= cur.len() {
                        break;
                    }
                    kept_tokens += v.tokens;
                    keep += 1;
                }
                if kept_tokens + u.tokens > budget {
                    keep = 0;
                    kept_tokens = 0;
                }
                cur.drain(..cur.len() - keep);
                cur_tokens = kept_tokens;
                fresh = 0;
            }
            cur.push(u);
            cur_tokens += u.tokens;
            fresh += 1;
        }
        if fresh > 0 {
            emit(&cur, out);
        }
    }

    /// Splits a block into units within `budget`: whole if it fits, else by sentence, else
    /// by token windows.
    fn units(&self, text: &str, page: Option<u32>, budget: usize) -> Vec<Unit> {
        let tokens = self.count(text);
        if tokens <= budget {
            return vec![Unit {
                text: text.to_string(),
                tokens,
                page,
            }];
        }
        let mut out = Vec::new();
        for sentence in sentences(text) {
            let tokens = self.count(sentence);
            if tokens <= budget {
                out.push(Unit {
                    text: sentence.to_string(),
                    tokens,
                    page,
                });
            } else {
                out.extend(
                    self.windows(sentence, budget)
                        .into_iter()
                        .map(|(text, tokens)| Unit { text, tokens, page }),
                );
            }
        }
        out
    }

    /// Cuts text at token boundaries into pieces of at most `budget` tokens.
    fn windows(&self, text: &str, budget: usize) -> Vec<(String, usize)> {
        let Ok(enc) = self.tokenizer.encode(text, false) else {
            return vec![(text.to_string(), text.len())];
        };
        let offsets = enc.get_offsets();
        offsets
            .chunks(budget.max(1))
            .filter_map(|w| {
                let (start, end) = (w.first()?.0, w.last()?.1);
                let piece = text.get(start..end)?.to_string();
                Some((piece, w.len()))
            })
            .collect()
    }
}

/// Sentence boundaries: `.`, `!` or `?` followed by whitespace.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') && bytes.get(i + 1).is_some_and(|b| b.is_ascii_whitespace())
        {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_terminal_punctuation() {
        assert_eq!(
            sentences("One. Two? Three! 3.14 is pi"),
            ["One.", "Two?", "Three!", "3.14 is pi"]
        );
    }
}
