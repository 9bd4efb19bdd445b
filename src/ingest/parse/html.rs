//! HTML through scraper (html5ever): the main content only. Scripts, styles, navigation,
//! headers, footers, sidebars and forms are skipped; `<main>` or `<article>` is preferred over
//! the whole body when the page has one.

use scraper::{ElementRef, Html, Node, Selector};

use super::{Bounds, MAX_HEADING_CHARS, Outline, Parsed, cut, squash};
use crate::ingest::IngestError;

/// Elements whose content is never document text.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg",
    "iframe", "button", "select", "textarea", "head", "canvas", "dialog",
];

/// Elements that end a block of text.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "li",
    "pre",
    "blockquote",
    "td",
    "th",
    "tr",
    "dd",
    "dt",
    "figcaption",
    "caption",
    "table",
    "ul",
    "ol",
    "dl",
    "br",
    "hr",
    "article",
    "main",
];

struct Walker {
    out: Outline,
}

impl Walker {
    /// Walks the tree under `root` with a stack of its own, so depth costs heap, never the
    /// thread's stack. A frame is the next child to visit and whether a block ends once the
    /// element's children are done.
    fn walk(&mut self, root: ElementRef<'_>) {
        let mut stack = vec![(root.first_child(), false)];
        while let Some(frame) = stack.last_mut() {
            let Some(node) = frame.0 else {
                if stack.pop().is_some_and(|(_, ends_block)| ends_block) {
                    self.out.end_block();
                }
                continue;
            };
            frame.0 = node.next_sibling();
            let e = match node.value() {
                Node::Text(t) => {
                    self.out.text(t);
                    continue;
                }
                Node::Element(e) => e,
                _ => continue,
            };
            let name = e.name();
            if SKIP.contains(&name) || hidden(e) {
                continue;
            }
            let Some(el) = ElementRef::wrap(node) else {
                continue;
            };
            if let Some(level) = heading_level(name) {
                self.out.end_block();
                let text = squash(&el.text().collect::<String>());
                // An empty heading (an icon, an anchor) adds nothing to the path.
                if !text.is_empty() {
                    self.out.heading(level, text);
                }
                continue;
            }
            let block = BLOCK.contains(&name);
            if block {
                self.out.end_block();
            }
            stack.push((el.first_child(), block));
        }
    }
}

fn hidden(e: &scraper::node::Element) -> bool {
    e.attr("hidden").is_some()
        || e.attr("aria-hidden") == Some("true")
        || matches!(
            e.attr("role"),
            Some("navigation" | "banner" | "contentinfo")
        )
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

fn first<'a>(doc: &'a Html, css: &str) -> Option<ElementRef<'a>> {
    let sel = Selector::parse(css).ok()?;
    doc.select(&sel).next()
}

pub fn parse(src: &str, bounds: &Bounds) -> Result<Parsed, IngestError> {
    let doc = Html::parse_document(src);
    let root = first(&doc, "main")
        .or_else(|| first(&doc, "article"))
        .or_else(|| first(&doc, "[role=main]"))
        .or_else(|| first(&doc, "body"))
        .unwrap_or_else(|| doc.root_element());
    let mut w = Walker {
        out: Outline::new(bounds),
    };
    w.walk(root);
    let mut out = w.out.finish()?;
    if let Some(t) = first(&doc, "title").map(|t| squash(&t.text().collect::<String>()))
        && !t.is_empty()
    {
        out.title = Some(cut(t, MAX_HEADING_CHARS));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_main_text_and_drops_boilerplate() {
        let p = parse(
            r#"<!doctype html><html><head><title>Qdrant notes</title><style>p{}</style></head>
            <body><nav><a href="/">Home</a> | <a>Docs</a></nav>
            <main><h1>Storage</h1><p>The WAL is <b>replayed</b> on start.</p>
            <script>var secret = 1;</script><h2>Snapshots</h2><ul><li>Full</li><li>Partial</li></ul>
            <div aria-hidden="true">decor</div></main>
            <footer>© 2026 Example</footer></body></html>"#,
            &crate::ingest::parse::tests::ROOMY,
        )
        .unwrap_or_default();
        assert_eq!(p.title.as_deref(), Some("Qdrant notes"));
        let got: Vec<(String, &str)> = p
            .blocks
            .iter()
            .map(|b| (b.headings.join(" › "), b.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Storage".to_string(), "The WAL is replayed on start."),
                ("Storage › Snapshots".to_string(), "Full"),
                ("Storage › Snapshots".to_string(), "Partial"),
            ]
        );
    }

    #[test]
    fn deep_nesting_costs_heap_not_stack() {
        // 20,000 nested elements overflow a 512 KiB stack in a recursive walk (html5ever
        // itself keeps its open elements on the heap).
        let depth = 20_000;
        let html = format!(
            "<html><body>{}deep text{}</body></html>",
            "<div><span>".repeat(depth / 2),
            "</span></div>".repeat(depth / 2)
        );
        let handle = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || parse(&html, &crate::ingest::parse::tests::ROOMY))
            .unwrap_or_else(|e| panic!("{e}"));
        let p = handle
            .join()
            .unwrap_or_else(|_| panic!("the walk overflowed"))
            .unwrap_or_default();
        assert!(p.blocks.iter().any(|b| b.text == "deep text"));
    }
}
