//! Parsers: bytes of a known kind → blocks of text, each with its heading path (and page, for
//! PDFs), so chunks and citations can say where they come from. All of them are CPU work;
//! the server runs them in a child process (`ingest::sandbox`).
//!
//! Every walk is bounded by construction: the HTML walk keeps its own stack instead of
//! recursing, headings are cut to [`MAX_HEADING_CHARS`], the text a document yields (its
//! blocks with their heading paths) stops at [`Bounds::max_text_bytes`], and a PDF whose
//! compressed streams inflate past [`Bounds::max_inflated_bytes`], or whose form XObjects
//! draw each other in a cycle or nest too deep, is refused before extraction. A panic
//! inside a parser (malformed input reaching a library bug) fails that document alone.

mod html;
mod markdown;
mod pdf;

use serde::{Deserialize, Serialize};

use super::{DocKind, IngestError};

/// Longest heading kept, in characters (longer ones are cut): every block carries its
/// heading path, so a huge heading would be copied into every block and chunk.
pub const MAX_HEADING_CHARS: usize = 200;

/// How much one document may yield.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes of text over all blocks, each block's heading path included.
    pub max_text_bytes: usize,
    /// Bytes a PDF's compressed streams may inflate to, all together.
    pub max_inflated_bytes: u64,
}

impl Bounds {
    /// The bounds for an upload of `len` bytes: `text_ratio` and `inflate_ratio` times its
    /// size (at least 64 KiB's worth).
    pub fn for_upload(len: usize, text_ratio: usize, inflate_ratio: u64) -> Self {
        let base = len.max(64 * 1024);
        Self {
            max_text_bytes: base.saturating_mul(text_ratio),
            max_inflated_bytes: (base as u64).saturating_mul(inflate_ratio),
        }
    }
}

/// A paragraph-like unit of text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Enclosing headings, outermost first.
    pub headings: Vec<String>,
    pub text: String,
    pub page: Option<u32>,
}

/// A parsed document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Parsed {
    /// The title the document gives itself (`<title>`, the first `# heading`), if any.
    pub title: Option<String>,
    pub blocks: Vec<Block>,
}

impl Parsed {
    /// Characters of text, to tell an empty parse (a scanned PDF) from a real one.
    pub fn text_chars(&self) -> usize {
        self.blocks.iter().map(|b| b.text.chars().count()).sum()
    }
}

/// Parses `bytes` as `kind` within `bounds`.
pub fn parse(kind: DocKind, bytes: &[u8], bounds: &Bounds) -> Result<Parsed, IngestError> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
        DocKind::Pdf => pdf::parse(bytes, bounds),
        DocKind::Html => html::parse(&utf8(bytes)?, bounds),
        DocKind::Markdown => markdown::parse(&utf8(bytes)?, bounds),
        DocKind::Text => text(&utf8(bytes)?, bounds),
    }))
    .map_err(|_| {
        IngestError::Parse(format!("the {} parser crashed on this file", kind.as_str()))
    })??;
    if parsed.text_chars() == 0 {
        return Err(match kind {
            DocKind::Pdf => IngestError::Parse(
                "the PDF has no text layer (a scanned document needs OCR first)".into(),
            ),
            _ => IngestError::Parse("the document has no text".into()),
        });
    }
    Ok(parsed)
}

fn utf8(bytes: &[u8]) -> Result<String, IngestError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        IngestError::Unsupported(format!(
            "the text is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Builds a document's blocks under their heading path, for parsers of structured text:
/// text accumulates until a block ends; a heading ends the block before it and replaces the
/// headings of its level and deeper; the first level-1 heading is the title.
pub(crate) struct Outline {
    out: Parsed,
    /// (level, text) of the enclosing headings.
    stack: Vec<(usize, String)>,
    buf: String,
    budget: TextBudget,
}

impl Outline {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        Self {
            out: Parsed::default(),
            stack: Vec::new(),
            buf: String::new(),
            budget: TextBudget::new(bounds),
        }
    }

    pub(crate) fn text(&mut self, t: &str) {
        // Past the budget nothing more is kept (the parse fails at `finish`).
        if self.budget.spent() {
            return;
        }
        self.buf.push_str(t);
    }

    /// Ends the current block (a no-op when it holds only whitespace).
    pub(crate) fn end_block(&mut self) {
        let text = squash(&self.buf);
        self.buf.clear();
        if text.is_empty() {
            return;
        }
        let headings: Vec<String> = self.stack.iter().map(|(_, h)| h.clone()).collect();
        if self.budget.take(&text, &headings) {
            self.out.blocks.push(Block {
                headings,
                text,
                page: None,
            });
        }
    }

    /// A heading of `level` (1 = top) with its (squashed) text, cut to
    /// [`MAX_HEADING_CHARS`].
    pub(crate) fn heading(&mut self, level: usize, text: String) {
        self.end_block();
        let text = cut(text, MAX_HEADING_CHARS);
        if level == 1 && self.out.title.is_none() {
            self.out.title = Some(text.clone());
        }
        self.stack.retain(|(l, _)| *l < level);
        self.stack.push((level, text));
    }

    pub(crate) fn finish(mut self) -> Result<Parsed, IngestError> {
        self.end_block();
        self.budget.check()?;
        Ok(self.out)
    }
}

/// Counts the bytes a document yields against [`Bounds::max_text_bytes`].
pub(crate) struct TextBudget {
    left: usize,
    max: usize,
    over: bool,
}

impl TextBudget {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        Self {
            left: bounds.max_text_bytes,
            max: bounds.max_text_bytes,
            over: false,
        }
    }

    fn spent(&self) -> bool {
        self.over
    }

    /// Takes a block of `text` under `headings`; false (and spent) when it does not fit.
    pub(crate) fn take(&mut self, text: &str, headings: &[String]) -> bool {
        let size = text.len() + headings.iter().map(String::len).sum::<usize>();
        match self.left.checked_sub(size) {
            Some(left) if !self.over => {
                self.left = left;
                true
            }
            _ => {
                self.over = true;
                false
            }
        }
    }

    pub(crate) fn check(&self) -> Result<(), IngestError> {
        if self.over {
            return Err(IngestError::Parse(format!(
                "the document yields more than {} bytes of text (headings included); it was \
                 not indexed",
                self.max
            )));
        }
        Ok(())
    }
}

/// `s` cut to `max` characters, marked with an ellipsis when cut.
pub(crate) fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// Collapses runs of whitespace (line breaks inside a paragraph included) to one space.
pub(crate) fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Plain text: paragraphs are separated by blank lines.
fn text(s: &str, bounds: &Bounds) -> Result<Parsed, IngestError> {
    let mut budget = TextBudget::new(bounds);
    let mut out = Parsed::default();
    paragraphs(s, None, &mut budget, &mut out.blocks);
    budget.check()?;
    Ok(out)
}

/// Appends the blank-line separated paragraphs of `s` (of `page`) as blocks, within the
/// budget.
pub(crate) fn paragraphs(
    s: &str,
    page: Option<u32>,
    budget: &mut TextBudget,
    out: &mut Vec<Block>,
) {
    for text in s
        .replace("\r\n", "\n")
        .split("\n\n")
        .map(squash)
        .filter(|p| !p.is_empty())
    {
        if !budget.take(&text, &[]) {
            return;
        }
        out.push(Block {
            headings: Vec::new(),
            text,
            page,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) const ROOMY: Bounds = Bounds {
        max_text_bytes: 1 << 24,
        max_inflated_bytes: 1 << 26,
    };

    #[test]
    fn text_paragraphs_and_empty_documents() {
        let p = parse(
            DocKind::Text,
            b"\xef\xbb\xbfFirst line\nsame para.\n\n\nSecond.",
            &ROOMY,
        )
        .unwrap();
        let texts: Vec<_> = p.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, ["First line same para.", "Second."]);
        assert!(parse(DocKind::Text, b" \n\n ", &ROOMY).is_err());
        assert!(parse(DocKind::Markdown, b"ok \xff", &ROOMY).is_err());
    }

    #[test]
    fn the_text_budget_stops_a_document_that_yields_too_much() {
        let tight = Bounds {
            max_text_bytes: 1_000,
            ..ROOMY
        };
        let big = "word ".repeat(100) + "\n\n";
        let e = parse(DocKind::Text, big.repeat(5).as_bytes(), &tight).unwrap_err();
        assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
        assert!(parse(DocKind::Text, big.as_bytes(), &tight).is_ok());
    }

    #[test]
    fn headings_are_cut_and_count_against_the_budget() {
        // One huge heading over many short paragraphs: the heading path is copied into
        // every block, so it is cut, and the copies are counted.
        let mut md = format!("# {}\n\n", "h".repeat(100_000));
        for i in 0..2_000 {
            md.push_str(&format!("p{i}\n\n"));
        }
        let p = parse(DocKind::Markdown, md.as_bytes(), &ROOMY).unwrap();
        assert!(p.title.unwrap().chars().count() <= MAX_HEADING_CHARS + 1);
        assert!(
            p.blocks
                .iter()
                .all(|b| b.headings[0].chars().count() <= MAX_HEADING_CHARS + 1)
        );
        let roomy_enough = Bounds::for_upload(md.len(), 8, 1);
        assert!(parse(DocKind::Markdown, md.as_bytes(), &roomy_enough).is_ok());
        let amplified = format!("# {}\n\n{}", "h".repeat(150), "p\n\n".repeat(200_000));
        let tight = Bounds::for_upload(amplified.len(), 4, 1);
        assert!(parse(DocKind::Markdown, amplified.as_bytes(), &tight).is_err());
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("ééé".into(), 2), "éé…");
        assert_eq!(cut("ab".into(), 2), "ab");
    }
}
