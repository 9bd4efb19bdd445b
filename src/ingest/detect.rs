//! What kind of document an upload is, decided by its bytes; the file name and declared
//! content type only choose between text formats the bytes cannot tell apart.

use serde::{Deserialize, Serialize};

use super::IngestError;

/// Document formats confab parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Text => "text",
            DocKind::Markdown => "markdown",
            DocKind::Html => "html",
            DocKind::Pdf => "pdf",
        }
    }

    /// The kind named `name` (as [`DocKind::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            DocKind::Text,
            DocKind::Markdown,
            DocKind::Html,
            DocKind::Pdf,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// Signatures of common binary formats, named in the error so a user knows what was refused.
const BINARY_MAGIC: &[(&[u8], &str)] = &[
    (
        b"PK\x03\x04",
        "a ZIP archive (DOCX, XLSX and EPUB are ZIP too)",
    ),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x7fELF", "an executable"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office file"),
];

/// Decides the kind of `bytes`. `name` and `content_type` are hints: `.md` or
/// `text/markdown` makes UTF-8 text Markdown; neither can make binary data text.
pub fn sniff(bytes: &[u8], name: &str, content_type: Option<&str>) -> Result<DocKind, IngestError> {
    if bytes.starts_with(b"%PDF-") {
        return Ok(DocKind::Pdf);
    }
    if let Some((_, what)) = BINARY_MAGIC.iter().find(|(m, _)| bytes.starts_with(m)) {
        return Err(IngestError::Unsupported(format!("the content is {what}")));
    }
    let head = &bytes[..bytes.len().min(8192)];
    let body = strip_bom(head);
    if body.contains(&0) || std::str::from_utf8(utf8_prefix(body)).is_err() {
        return Err(IngestError::Unsupported(
            "the content is neither a PDF nor UTF-8 text".into(),
        ));
    }
    let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
    let start = lower.trim_start();
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    if ["<!doctype html", "<html", "<head", "<body"]
        .iter()
        .any(|t| start.starts_with(t))
        || ct.starts_with("text/html")
        || ct.starts_with("application/xhtml")
        || matches!(ext.as_deref(), Some("html" | "htm" | "xhtml")) && start.starts_with('<')
    {
        return Ok(DocKind::Html);
    }
    if ct.starts_with("text/markdown") || matches!(ext.as_deref(), Some("md" | "markdown" | "mdx"))
    {
        return Ok(DocKind::Markdown);
    }
    Ok(DocKind::Text)
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b)
}

/// The sniffed window may cut a multi-byte character: drop up to 3 trailing bytes of an
/// incomplete sequence so only real encoding errors count.
fn utf8_prefix(b: &[u8]) -> &[u8] {
    match std::str::from_utf8(b) {
        Ok(_) => b,
        Err(e) if e.error_len().is_none() => &b[..e.valid_up_to()],
        Err(_) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides_not_the_extension() {
        assert_eq!(
            sniff(b"%PDF-1.7\n...", "notes.txt", None).ok(),
            Some(DocKind::Pdf)
        );
        assert!(sniff(b"\x89PNG\r\n", "paper.pdf", Some("application/pdf")).is_err());
        assert!(sniff(&[0xff, 0xfe, 0x00, 0x41], "a.txt", None).is_err());
        assert_eq!(
            sniff(b"  <!DOCTYPE html><p>x", "page", None).ok(),
            Some(DocKind::Html)
        );
        assert_eq!(
            sniff(b"# Title\n", "README.md", None).ok(),
            Some(DocKind::Markdown)
        );
        assert_eq!(
            sniff(b"# Title\n", "README", None).ok(),
            Some(DocKind::Text)
        );
        // A multi-byte character cut by the sniff window is not an error.
        let mut long = vec![b'a'; 8191];
        long.extend("é".as_bytes());
        assert_eq!(sniff(&long, "a.txt", None).ok(), Some(DocKind::Text));
    }
}
