//! HTML through scraper (html5ever): the main content only. Scripts, styles, navigation,
//! headers, footers, sidebars and forms are skipped; `<main>` or `<article>` is preferred over
//! the whole body when the page has one.

use scraper::{ElementRef, Html, Node, Selector};

use super::{Outline, Parsed, squash};

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
    fn walk(&mut self, el: ElementRef<'_>) {
        for child in el.children() {
            match child.value() {
                Node::Text(t) => self.out.text(t),
                Node::Element(e) => {
                    let name = e.name();
                    let hidden = e.attr("hidden").is_some()
                        || e.attr("aria-hidden") == Some("true")
                        || matches!(
                            e.attr("role"),
                            Some("navigation" | "banner" | "contentinfo")
                        );
                    if SKIP.contains(&name) || hidden {
                        continue;
                    }
                    let Some(child_el) = ElementRef::wrap(child) else {
                        continue;
                    };
                    if let Some(level) = heading_level(name) {
                        self.out.end_block();
                        let text = squash(&child_el.text().collect::<String>());
                        // An empty heading (an icon, an anchor) adds nothing to the path.
                        if !text.is_empty() {
                            self.out.heading(level, text);
                        }
                    } else if BLOCK.contains(&name) {
                        self.out.end_block();
                        self.walk(child_el);
                        self.out.end_block();
                    } else {
                        self.walk(child_el);
                    }
                }
                _ => {}
            }
        }
    }
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

pub fn parse(src: &str) -> Parsed {
    let doc = Html::parse_document(src);
    let root = first(&doc, "main")
        .or_else(|| first(&doc, "article"))
        .or_else(|| first(&doc, "[role=main]"))
        .or_else(|| first(&doc, "body"))
        .unwrap_or_else(|| doc.root_element());
    let mut w = Walker {
        out: Outline::default(),
    };
    w.walk(root);
    let mut out = w.out.finish();
    if let Some(t) = first(&doc, "title").map(|t| squash(&t.text().collect::<String>()))
        && !t.is_empty()
    {
        out.title = Some(t);
    }
    out
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
        );
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
}
