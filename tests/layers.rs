//! The architecture, checked: the bottom layer (config/, protocol/, error.rs, metrics/)
//! imports nothing above it, the turn engine knows nothing of rooms or the HTTP edge, and
//! no function in src/ grows past ~80 lines or 6 parameters. Comments are ignored (a doc
//! link is not a dependency). See docs/architecture.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules of the bottom layer.
const BOTTOM: &[&str] = &["config", "protocol", "error", "metrics"];

/// (files, modules they must not name).
fn rules() -> Vec<(&'static str, Vec<&'static str>)> {
    let above_bottom = vec![
        "api",
        "app",
        "auth",
        "cache",
        "chat",
        "embedding",
        "ingest",
        "ingest_cli",
        "lifecycle",
        "limits",
        "net",
        "providers",
        "retrieval",
        "rooms",
        "safety",
        "telemetry",
        "tools",
        "vector",
        "ws",
    ];
    let edges = vec!["rooms", "api", "ws", "app"];
    vec![
        ("config", above_bottom.clone()),
        ("protocol", above_bottom.clone()),
        ("error.rs", above_bottom.clone()),
        ("metrics", above_bottom),
        ("chat", edges.clone()),
        ("tools", [edges, vec!["chat"]].concat()),
    ]
}

const MAX_LINES: usize = 80;
const MAX_PARAMS: usize = 6;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file with comments, string and char literals blanked out (same length,
/// same lines), so braces and paths inside them are not seen.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                out.push(blank(b[i]));
                i += 1;
            }
            out.push_str("  ");
            i += 2;
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && b.get(i + 2) == Some(&'"')))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            let hashes = b[i + 1..].iter().take_while(|c| **c == '#').count();
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let start = i + 2 + hashes;
            out.push_str(&" ".repeat(start - i));
            i = start;
            while i < b.len() && !b[i..].iter().collect::<String>().starts_with(&close) {
                out.push(blank(b[i]));
                i += 1;
            }
            out.push_str(&" ".repeat(close.len()));
            i += close.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next.is_some() && (b.get(i + 2) == Some(&'\'') || next == Some('\\'))
        {
            // A char literal ('{', '\n', '\''); a lifetime has no closing quote.
            let end = if next == Some('\\') {
                b[i + 3..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map_or(b.len(), |p| i + 4 + p)
            } else {
                i + 3
            };
            out.push_str(&" ".repeat(end.min(b.len()) - i));
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every `crate::<module>` the code names, grouped imports (`crate::{a, b::c}`) included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn relative(p: &Path) -> String {
    p.strip_prefix(src()).unwrap_or(p).display().to_string()
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for (scope, forbidden) in rules() {
        for f in files.iter().filter(|f| relative(f).starts_with(scope)) {
            let code = code_only(&std::fs::read_to_string(f).unwrap_or_default());
            for name in crate_paths(&code) {
                if forbidden.contains(&name.as_str()) {
                    violations.push(format!("{} names crate::{name}", relative(f)));
                }
            }
            if scope != "chat" && code.contains("super::super") {
                violations.push(format!("{} reaches out with super::super", relative(f)));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
    assert!(BOTTOM.iter().all(|m| !rules()[0].1.contains(m)));
}

/// `(name, first line, lines, parameters)` of every function with a body.
fn functions(code: &str) -> Vec<(String, usize, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ").filter(|&a| {
            a == 0
                || !line.as_bytes()[a - 1].is_ascii_alphanumeric() && line.as_bytes()[a - 1] != b'_'
        }) else {
            continue;
        };
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // The signature runs to the body's `{` (or a `;`: no body).
        let (mut depth, mut sig, mut end) = (0i64, String::new(), None);
        let mut opened = false;
        'scan: for (m, l) in lines.iter().enumerate().skip(n) {
            let from = if m == n { at } else { 0 };
            for ch in l[from..].chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break 'scan,
                    _ => {}
                }
                if !opened {
                    sig.push(ch);
                }
                if opened && depth == 0 {
                    end = Some(m);
                    break 'scan;
                }
            }
            sig.push(' ');
        }
        let Some(end) = end else { continue };
        out.push((name, n + 1, end - n + 1, params(&sig)));
    }
    out
}

/// Parameters in a signature, `self` not counted.
fn params(sig: &str) -> usize {
    let Some(open) = sig.find('(') else { return 0 };
    let (mut depth, mut cur, mut parts) = (0i32, String::new(), Vec::new());
    for ch in sig[open + 1..].chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' if depth == 0 => break,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let p = p
                .trim_start_matches('&')
                .trim_start_matches("mut ")
                .trim_start();
            let p = p
                .strip_prefix('\'')
                .map_or(p, |r| r.split_once(' ').map_or(r, |(_, x)| x));
            let p = p.trim_start_matches("mut ");
            !(p == "self" || p.starts_with("self:") || p.starts_with("self "))
        })
        .count()
}

#[test]
fn functions_stay_small() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut big = Vec::new();
    for f in &files {
        let code = code_only(&std::fs::read_to_string(f).unwrap_or_default());
        for (name, line, len, n) in functions(&code) {
            if len > MAX_LINES || n > MAX_PARAMS {
                big.push(format!(
                    "{}:{line} fn {name}: {len} lines, {n} parameters",
                    relative(f)
                ));
            }
        }
    }
    assert!(
        big.is_empty(),
        "split these (≤ {MAX_LINES} lines, ≤ {MAX_PARAMS} parameters):\n{}",
        big.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_should() {
    let code = code_only(
        "use crate::{cache::X, rooms};\n// crate::chat\nlet s = \"crate::api {\";\nfn f(a: u8, b: &mut Vec<(u8, u8)>, self) {\n  let c = '{';\n}\n",
    );
    let paths = crate_paths(&code);
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["cache", "rooms"]);
    let fns = functions(&code);
    assert_eq!(fns, vec![("f".to_string(), 4, 3, 2)]);
}
