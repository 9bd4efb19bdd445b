//! Markdown (CommonMark with tables) through pulldown-cmark: headings become the heading
//! path; paragraphs, list items, code blocks and table rows become blocks.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::{Block, Parsed, squash};

pub fn parse(src: &str) -> Parsed {
    let mut out = Parsed::default();
    // (level, text) of the enclosing headings.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut heading: Option<(usize, String)> = None;
    let mut buf = String::new();
    let flush = |buf: &mut String, stack: &[(usize, String)], out: &mut Parsed| {
        let text = squash(buf);
        buf.clear();
        if !text.is_empty() {
            out.blocks.push(Block {
                headings: stack.iter().map(|(_, h)| h.clone()).collect(),
                text,
                page: None,
            });
        }
    };
    for ev in Parser::new_ext(src, Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Heading { level, .. }) => {
                flush(&mut buf, &stack, &mut out);
                heading = Some((level as usize, String::new()));
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text)) = heading.take() {
                    let text = squash(&text);
                    if level == 1 && out.title.is_none() {
                        out.title = Some(text.clone());
                    }
                    stack.retain(|(l, _)| *l < level);
                    stack.push((level, text));
                }
            }
            Event::Text(t) | Event::Code(t) => match &mut heading {
                Some((_, h)) => h.push_str(&t),
                None => buf.push_str(&t),
            },
            Event::SoftBreak | Event::HardBreak => buf.push(' '),
            Event::End(TagEnd::TableCell) => buf.push_str(" | "),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableRow
                | TagEnd::TableHead,
            ) => flush(&mut buf, &stack, &mut out),
            _ => {}
        }
    }
    flush(&mut buf, &stack, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_become_paths() {
        let p = parse(
            "# Guide\n\nIntro text.\n\n## Install\n\nRun `make`.\n\n- one\n- two\n\n# Next\n\nEnd.",
        );
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
