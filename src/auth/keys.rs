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
    /// One key for two holders would make every request of one of them the other's.
    #[error(
        "the same key hash is listed for {first} and for {second}; give each holder its own key"
    )]
    Duplicate { first: String, second: String },
}

/// What a key file that is gone means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// At start: the configuration is wrong.
    Fails,
    /// On reload: the secret was removed, so its keys are revoked (fail closed).
    Revokes,
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

/// Builds the index of every tenant's keys (inline and from files). A hash listed for two
/// holders is refused with both names; a key file that is gone fails or revokes its keys,
/// as `missing` says.
pub fn index<'a>(
    tenants: impl Iterator<Item = (&'a String, &'a TenantConfig)>,
    missing: Missing,
) -> Result<KeyIndex, KeyFileError> {
    let mut idx = KeyIndex::new();
    for (tenant, t) in tenants {
        let tenant: Arc<str> = Arc::from(tenant.as_str());
        let inline = t
            .keys
            .iter()
            .filter_map(|k| Some((k.user.clone(), parse_key_hash(&k.sha256)?)));
        let from_file = match &t.keys_file {
            Some(path) => file_keys(path, missing)?,
            None => Vec::new(),
        };
        for (user, h) in inline.chain(from_file) {
            let holder = Principal {
                tenant: tenant.clone(),
                user: Arc::from(user.as_str()),
            };
            add(&mut idx, h, holder)?;
        }
    }
    Ok(idx)
}

fn file_keys(path: &Path, missing: Missing) -> Result<Vec<(String, [u8; 32])>, KeyFileError> {
    match parse_file(path) {
        Err(KeyFileError::Read { source, .. })
            if missing == Missing::Revokes && source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::error!(path = %path.display(), "key file is gone: its keys are revoked");
            Ok(Vec::new())
        }
        other => other,
    }
}

fn add(idx: &mut KeyIndex, h: [u8; 32], holder: Principal) -> Result<(), KeyFileError> {
    match idx.get(&h) {
        Some(first) if *first != holder => Err(KeyFileError::Duplicate {
            first: format!("{}/{}", first.tenant, first.user),
            second: format!("{}/{}", holder.tenant, holder.user),
        }),
        _ => {
            idx.insert(h, holder);
            Ok(())
        }
    }
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

    fn tenant(keys: &[(&str, &str)], file: Option<std::path::PathBuf>) -> TenantConfig {
        TenantConfig {
            keys: keys
                .iter()
                .map(|(user, key)| crate::config::KeyEntry {
                    user: user.to_string(),
                    sha256: hash_text(key),
                })
                .collect(),
            keys_file: file,
            ..TenantConfig::default()
        }
    }

    #[test]
    fn one_key_for_two_holders_is_refused_with_both_names() {
        let tenants = std::collections::BTreeMap::from([
            ("acme".to_string(), tenant(&[("ann", "k1")], None)),
            ("beta".to_string(), tenant(&[("bob", "k1")], None)),
        ]);
        let e = index(tenants.iter(), Missing::Fails)
            .unwrap_err()
            .to_string();
        assert!(e.contains("acme/ann") && e.contains("beta/bob"), "{e}");
        let same_user = std::collections::BTreeMap::from([(
            "acme".to_string(),
            tenant(&[("ann", "k1"), ("ann", "k1"), ("amy", "k2")], None),
        )]);
        assert_eq!(index(same_user.iter(), Missing::Fails).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_key_file_fails_at_start_and_revokes_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let tenants = std::collections::BTreeMap::from([(
            "acme".to_string(),
            tenant(&[("ann", "k1")], Some(gone)),
        )]);
        assert!(index(tenants.iter(), Missing::Fails).is_err());
        let idx = index(tenants.iter(), Missing::Revokes).unwrap();
        assert_eq!(idx.len(), 1, "the inline key stays, the file's are gone");
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
