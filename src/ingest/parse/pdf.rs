//! PDF text layers through pdf-extract (lopdf underneath), page by page. Encrypted files that
//! need a password and files with no text layer fail with a reason.

use super::{Block, Parsed, paragraphs};
use crate::ingest::IngestError;

pub fn parse(bytes: &[u8]) -> Result<Parsed, IngestError> {
    let mut doc = pdf_extract::Document::load_mem(bytes)
        .map_err(|e| IngestError::Parse(format!("not a readable PDF: {e}")))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(IngestError::Parse(
            "the PDF is encrypted and needs a password".into(),
        ));
    }
    let pages = pdf_extract::extract_text_from_mem_by_pages(bytes)
        .map_err(|e| IngestError::Parse(format!("cannot extract the PDF's text: {e}")))?;
    let mut out = Parsed::default();
    for (i, page) in pages.iter().enumerate() {
        // Words hyphenated across a line break are joined again.
        let page = page.replace("-\n", "");
        let blocks: Vec<Block> = paragraphs(&page, &[], Some(i as u32 + 1));
        out.blocks.extend(blocks);
    }
    Ok(out)
}
