//! PDF text layers through pdf-extract (lopdf underneath), page by page. Encrypted files that
//! need a password and files with no text layer fail with a reason.
//!
//! Before extraction, every FlateDecode stream is inflated with a cap on the total, so a
//! decompression bomb is refused with a reason instead of exhausting memory. What pdf-extract
//! does inside (it follows form XObjects without a cycle check) is contained by the parse
//! running in a child process (`ingest::sandbox`): its death fails this document alone.

use std::io::Read;

use pdf_extract::Document;

use super::{Bounds, Parsed, TextBudget, paragraphs};
use crate::ingest::IngestError;

pub fn parse(bytes: &[u8], bounds: &Bounds) -> Result<Parsed, IngestError> {
    let mut doc = Document::load_mem(bytes)
        .map_err(|e| IngestError::Parse(format!("not a readable PDF: {e}")))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(IngestError::Parse(
            "the PDF is encrypted and needs a password".into(),
        ));
    }
    check_inflation(&doc, bounds.max_inflated_bytes)?;
    let pages = pdf_extract::extract_text_from_mem_by_pages(bytes)
        .map_err(|e| IngestError::Parse(format!("cannot extract the PDF's text: {e}")))?;
    let mut budget = TextBudget::new(bounds);
    let mut out = Parsed::default();
    for (i, page) in pages.iter().enumerate() {
        // Words hyphenated across a line break are joined again.
        let page = page.replace("-\n", "");
        paragraphs(&page, Some(i as u32 + 1), &mut budget, &mut out.blocks);
    }
    budget.check()?;
    Ok(out)
}

/// Inflates every FlateDecode stream into nothing, counting: the total may not pass `max`.
fn check_inflation(doc: &Document, max: u64) -> Result<(), IngestError> {
    let mut total: u64 = 0;
    for obj in doc.objects.values() {
        let Ok(stream) = obj.as_stream() else {
            continue;
        };
        let flate = stream
            .filters()
            .is_ok_and(|f| f.iter().any(|name| *name == b"FlateDecode"));
        if !flate {
            continue;
        }
        let left = max.saturating_sub(total);
        let mut inflated = flate2::read::ZlibDecoder::new(&stream.content[..]).take(left + 1);
        // A corrupt stream counts for what inflated before the error.
        total += std::io::copy(&mut inflated, &mut std::io::sink()).unwrap_or(0);
        if total > max {
            return Err(IngestError::Parse(format!(
                "the PDF's compressed streams inflate past {max} bytes; it was not indexed"
            )));
        }
    }
    Ok(())
}
