//! API keys: generated from the OS's random source, stored and compared as SHA-256 hashes.
//! A key is high-entropy (192 bits), so a plain hash is enough: there is nothing to guess.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Principal;
use crate::config::{TenantConfig, parse_key_hash};

/// Prefix of every key confab generates (makes leaked keys easy to spot and to redact).
pub const KEY_PREFIX: &str = "cfk_";

/// The hash a config stores for `key`.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:HEX` as written in config.
pub fn hash_text(key: &str) -> String {
    format!("sha256:{}", hex::encode(hash(key)))
}

/// A new random key.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(raw)))
}

/// Key hash → who holds it.
pub type KeyIndex = HashMap<[u8; 32], Principal>;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected `USER sha256:HEX`")]
    Line { path: String, line: usize },
}

/// Parses a key file: one `USER sha256:HEX` per line, blank lines and `#` comments allowed.
pub fn parse_file(path: &Path) -> Result<Vec<(String, [u8; 32])>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let parsed = match (parts.next(), parts.next(), parts.next()) {
            (Some(user), Some(h), None) if user.len() <= 64 => {
                parse_key_hash(h).map(|h| (user.to_string(), h))
            }
            _ => None,
        };
        match parsed {
            Some(entry) => out.push(entry),
            None => {
                return Err(KeyFileError::Line {
                    path: path.display().to_string(),
                    line: i + 1,
                });
            }
        }
    }
    Ok(out)
}

/// Builds the index of every tenant's keys (inline and from files).
pub fn index<'a>(
    tenants: impl Iterator<Item = (&'a String, &'a TenantConfig)>,
) -> Result<KeyIndex, KeyFileError> {
    let mut idx = KeyIndex::new();
    for (tenant, t) in tenants {
        let tenant: Arc<str> = Arc::from(tenant.as_str());
        let mut add = |user: &str, h: [u8; 32]| {
            idx.insert(
                h,
                Principal {
                    tenant: tenant.clone(),
                    user: Arc::from(user),
                },
            );
        };
        for k in &t.keys {
            if let Some(h) = parse_key_hash(&k.sha256) {
                add(&k.user, h);
            }
        }
        if let Some(path) = &t.keys_file {
            for (user, h) in parse_file(path)? {
                add(&user, h);
            }
        }
    }
    Ok(idx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_hash_round_trips() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 48);
        assert_eq!(parse_key_hash(&hash_text(&a)), Some(hash(&a)));
    }

    #[test]
    fn key_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        let h = hash_text("k1");
        std::fs::write(&p, format!("# rotated 2026-11\nalice {h}\n\nbob {h}\n")).unwrap();
        let got = parse_file(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "bob");
        std::fs::write(&p, "alice k1\n").unwrap();
        let err = parse_file(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
    }
}
