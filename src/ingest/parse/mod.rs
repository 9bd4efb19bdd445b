//! Parsers: bytes of a known kind → blocks of text, each with its heading path (and page, for
//! PDFs), so chunks and citations can say where they come from. All of them are CPU work and
//! run on blocking threads; a panic inside a parser (malformed input reaching a library bug)
//! fails that document alone.

mod html;
mod markdown;
mod pdf;

use super::{DocKind, IngestError};

/// A paragraph-like unit of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Enclosing headings, outermost first.
    pub headings: Vec<String>,
    pub text: String,
    pub page: Option<u32>,
}

/// A parsed document.
#[derive(Debug, Clone, Default)]
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

/// Parses `bytes` as `kind`.
pub fn parse(kind: DocKind, bytes: &[u8]) -> Result<Parsed, IngestError> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match kind {
        DocKind::Pdf => pdf::parse(bytes),
        DocKind::Html => Ok(html::parse(&utf8(bytes)?)),
        DocKind::Markdown => Ok(markdown::parse(&utf8(bytes)?)),
        DocKind::Text => Ok(text(&utf8(bytes)?)),
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
#[derive(Default)]
pub(crate) struct Outline {
    out: Parsed,
    /// (level, text) of the enclosing headings.
    stack: Vec<(usize, String)>,
    buf: String,
}

impl Outline {
    pub(crate) fn text(&mut self, t: &str) {
        self.buf.push_str(t);
    }

    /// Ends the current block (a no-op when it holds only whitespace).
    pub(crate) fn end_block(&mut self) {
        let text = squash(&self.buf);
        self.buf.clear();
        if !text.is_empty() {
            self.out.blocks.push(Block {
                headings: self.stack.iter().map(|(_, h)| h.clone()).collect(),
                text,
                page: None,
            });
        }
    }

    /// A heading of `level` (1 = top) with its (squashed) text.
    pub(crate) fn heading(&mut self, level: usize, text: String) {
        self.end_block();
        if level == 1 && self.out.title.is_none() {
            self.out.title = Some(text.clone());
        }
        self.stack.retain(|(l, _)| *l < level);
        self.stack.push((level, text));
    }

    pub(crate) fn finish(mut self) -> Parsed {
        self.end_block();
        self.out
    }
}

/// Collapses runs of whitespace (line breaks inside a paragraph included) to one space.
pub(crate) fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Plain text: paragraphs are separated by blank lines.
fn text(s: &str) -> Parsed {
    Parsed {
        title: None,
        blocks: paragraphs(s, &[], None),
    }
}

/// Blocks from blank-line separated paragraphs.
pub(crate) fn paragraphs(s: &str, headings: &[String], page: Option<u32>) -> Vec<Block> {
    s.replace("\r\n", "\n")
        .split("\n\n")
        .map(squash)
        .filter(|p| !p.is_empty())
        .map(|text| Block {
            headings: headings.to_vec(),
            text,
            page,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_paragraphs_and_empty_documents() {
        let p = parse(
            DocKind::Text,
            b"\xef\xbb\xbfFirst line\nsame para.\n\n\nSecond.",
        )
        .unwrap();
        let texts: Vec<_> = p.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, ["First line same para.", "Second."]);
        assert!(parse(DocKind::Text, b" \n\n ").is_err());
        assert!(parse(DocKind::Markdown, b"ok \xff").is_err());
    }
}
