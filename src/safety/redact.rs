//! Streaming redaction. A secret is one run of non-whitespace starting at a word boundary
//! with a known prefix (`sk-`, `AKIA`, …), so only text that could still become one is held
//! back: a key split across two deltas is seen whole, while ordinary words flow on at once.
//! With e-mail redaction on, every unfinished word is held (any word may be an address's
//! local part). A run longer than [`MAX_HOLD`] is released anyway (nothing real is).

use std::sync::OnceLock;

use regex::Regex;

/// Longest run of non-whitespace held back, in bytes.
pub const MAX_HOLD: usize = 512;

const SECRET: &str = concat!(
    r"\b(?:",
    r"sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_\-]{20,}", // OpenAI, Anthropic
    r"|cfk_[0-9a-f]{48}",                                  // confab's own keys
    r"|AKIA[0-9A-Z]{16}",                                  // AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}",                        // GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}",
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}", // Slack
    r"|AIza[0-9A-Za-z_\-]{35}",        // Google API key
    r"|sk_live_[0-9A-Za-z]{20,}",      // Stripe
    r"|eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}", // JWT
    r")"
);
const EMAIL: &str = r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b";

/// How the secrets above begin: text that starts like one (or could still grow into one)
/// is held until it is complete.
const PREFIXES: &[&str] = &[
    "sk-",
    "sk_live_",
    "cfk_",
    "AKIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "AIza",
    "eyJ",
];

fn could_start(s: &str) -> bool {
    PREFIXES
        .iter()
        .any(|p| s.starts_with(p) || (s.len() < p.len() && p.starts_with(s)))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub const SECRET_MARK: &str = "[redacted:secret]";
pub const EMAIL_MARK: &str = "[redacted:email]";

fn regex(p: &'static str, slot: &'static OnceLock<Option<Regex>>) -> Option<&'static Regex> {
    slot.get_or_init(|| {
        Regex::new(p)
            .map_err(|e| tracing::error!(error = %e, "redaction pattern does not compile"))
            .ok()
    })
    .as_ref()
}

fn secret_re() -> Option<&'static Regex> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    regex(SECRET, &R)
}

fn email_re() -> Option<&'static Regex> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    regex(EMAIL, &R)
}

/// Redacts one stream of text.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: bool,
    emails: bool,
    held: String,
    /// Replacements made, by kind ("secret", "email").
    pub counts: [u64; 2],
}

impl Redactor {
    /// `None` when nothing is to be redacted (no holding back either).
    pub fn new(secrets: bool, emails: bool) -> Option<Self> {
        (secrets || emails).then(|| Self {
            secrets,
            emails,
            ..Self::default()
        })
    }

    /// Redacts a complete text: one pass per pattern, counting as it replaces.
    pub fn apply(&mut self, text: &str) -> String {
        let mut out = text.to_string();
        let layers = [
            (self.secrets, secret_re(), SECRET_MARK),
            (self.emails, email_re(), EMAIL_MARK),
        ];
        for (i, (on, re, mark)) in layers.into_iter().enumerate() {
            let Some(re) = re.filter(|_| on) else {
                continue;
            };
            let mut n = 0;
            let replaced = re.replace_all(&out, |_: &regex::Captures<'_>| {
                n += 1;
                mark
            });
            if n > 0 {
                out = replaced.into_owned();
                self.counts[i] += n;
            }
        }
        out
    }

    /// Takes the next delta; returns what may be released now (possibly empty).
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        // Everything up to the last whitespace is complete.
        let done = self.held.rfind(char::is_whitespace).map_or(0, |i| {
            i + self.held[i..].chars().next().map_or(1, char::len_utf8)
        });
        let tail = &self.held[done..];
        let hold = if self.emails {
            0
        } else {
            // The first word start in the unfinished run that may begin a secret.
            let mut prev: Option<char> = None;
            let mut at = tail.len();
            for (i, c) in tail.char_indices() {
                if prev.is_none_or(|p| !is_word(p)) && could_start(&tail[i..]) {
                    at = i;
                    break;
                }
                prev = Some(c);
            }
            at
        };
        let cut = if tail.len() - hold > MAX_HOLD {
            self.held.len()
        } else {
            done + hold
        };
        let ready: String = self.held.drain(..cut).collect();
        self.apply(&ready)
    }

    /// Forgets what is held (it belonged to an attempt whose text was never shown).
    pub fn discard(&mut self) {
        self.held.clear();
    }

    /// Releases whatever is held (end of the answer).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.apply(&rest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_across_deltas_are_redacted() {
        let mut r = Redactor::new(true, false).unwrap();
        let mut out = String::new();
        for piece in [
            "Use the key sk-pro",
            "j-abcdefghij",
            "KLMNOPQRSTUV1234 to call",
            " it.",
        ] {
            out.push_str(&r.push(piece));
        }
        out.push_str(&r.finish());
        assert_eq!(out, format!("Use the key {SECRET_MARK} to call it."));
        assert_eq!(r.counts, [1, 0]);
    }

    #[test]
    fn ordinary_words_are_not_held() {
        let mut r = Redactor::new(true, false).unwrap();
        assert_eq!(r.push("half"), "half");
        assert_eq!(r.push(" s"), " ", "could begin sk-");
        assert_eq!(r.push("ure"), "sure");
        assert_eq!(r.push(" key:sk-"), " key:", "held from the boundary on");
        let rest = format!("{}{}", r.push("abcdefghijklmnopqrstuvwx."), r.finish());
        assert_eq!(rest, format!("{SECRET_MARK}."));
    }

    #[test]
    fn emails_only_when_asked() {
        let text = "Write to ann.lee@example.co.uk, or AKIAABCDEFGHIJKLMNOP.";
        let mut off = Redactor::new(true, false).unwrap();
        assert_eq!(
            off.apply(text),
            format!("Write to ann.lee@example.co.uk, or {SECRET_MARK}.")
        );
        let mut on = Redactor::new(true, true).unwrap();
        assert_eq!(
            on.apply(text),
            format!("Write to {EMAIL_MARK}, or {SECRET_MARK}.")
        );
        assert!(Redactor::new(false, false).is_none());
    }
}
