//! Markdown (CommonMark with tables) through pulldown-cmark: headings become the heading
//! path; paragraphs, list items, code blocks and table rows become blocks.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::{Bounds, Outline, Parsed, squash};
use crate::ingest::IngestError;

pub fn parse(src: &str, bounds: &Bounds) -> Result<Parsed, IngestError> {
    let mut out = Outline::new(bounds);
    // The heading being read: its level and text so far.
    let mut heading: Option<(usize, String)> = None;
    for ev in Parser::new_ext(src, Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Heading { level, .. }) => {
                out.end_block();
                heading = Some((level as usize, String::new()));
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text)) = heading.take() {
                    out.heading(level, squash(&text));
                }
            }
            Event::Text(t) | Event::Code(t) => match &mut heading {
                // Only what can be kept of a heading is read.
                Some((_, h)) if h.len() < super::MAX_HEADING_CHARS * 4 => h.push_str(&t),
                Some(_) => {}
                None => out.text(&t),
            },
            Event::SoftBreak | Event::HardBreak => out.text(" "),
            Event::End(TagEnd::TableCell) => out.text(" | "),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableRow
                | TagEnd::TableHead,
            ) => out.end_block(),
            _ => {}
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_become_paths() {
        let p = parse(
            "# Guide\n\nIntro text.\n\n## Install\n\nRun `make`.\n\n- one\n- two\n\n# Next\n\nEnd.",
            &crate::ingest::parse::tests::ROOMY,
        )
        .unwrap_or_default();
        assert_eq!(p.title.as_deref(), Some("Guide"));
        let got: Vec<(String, &str)> = p
            .blocks
            .iter()
            .map(|b| (b.headings.join(" › "), b.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Guide".to_string(), "Intro text."),
                ("Guide › Install".to_string(), "Run make."),
                ("Guide › Install".to_string(), "one"),
                ("Guide › Install".to_string(), "two"),
                ("Next".to_string(), "End."),
            ]
        );
    }
}
