//! Who is calling: API keys map a request to a [`Principal`] (tenant and user) at the edge,
//! once, and everything behind it (rooms, documents, searches, caches, budgets) is keyed by
//! that tenant. WebSockets authenticate at the upgrade, and browsers' cross-site upgrades are
//! refused by an Origin allow-list.

pub mod keys;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use poem::http::{HeaderMap, header};
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::error::ErrorCode;

pub use keys::{KeyFileError, KeyIndex};

/// The tenant of dev mode, which has no keys.
pub const DEV_TENANT: &str = "default";
/// The user of every dev-mode request.
pub const DEV_USER: &str = "dev";
/// Browsers cannot set headers on a WebSocket; they offer this subprotocol prefix followed
/// by the key instead (`new WebSocket(url, ["confab.v1", "confab.bearer." + key])`).
pub const WS_BEARER_PREFIX: &str = "confab.bearer.";
/// The subprotocol the server selects when a client offers it.
pub const WS_PROTOCOL: &str = "confab.v1";

/// An authenticated caller. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
}

impl Principal {
    /// The dev-mode caller.
    pub fn dev() -> Self {
        Self {
            tenant: Arc::from(DEV_TENANT),
            user: Arc::from(DEV_USER),
        }
    }
}

/// Why a request was refused before it reached a route.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("origin {0:?} may not open WebSockets here (auth.allowed_origins)")]
    Origin(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing | AuthError::Invalid => ErrorCode::Unauthorized,
            AuthError::Origin(_) => ErrorCode::Forbidden,
        }
    }

    /// Bounded metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Origin(_) => "origin",
        }
    }
}

/// Resolves keys to principals; the key index is swapped whole when key files change.
pub struct Authenticator {
    cfg: AuthConfig,
    keys: RwLock<Arc<KeyIndex>>,
    /// Bumped whenever a reload took keys away: open sessions check that theirs still holds.
    revoked: tokio::sync::watch::Sender<u64>,
}

/// Who a WebSocket is, and by which key (none in dev mode).
#[derive(Debug, Clone)]
pub struct Credential {
    pub principal: Principal,
    pub key: Option<[u8; 32]>,
}

impl Authenticator {
    /// Reads every tenant's keys; a missing or malformed key file, or one key listed for two
    /// holders, fails the boot.
    pub fn new(cfg: &AuthConfig) -> Result<Self, KeyFileError> {
        let keys = keys::index(cfg.tenants.iter(), keys::Missing::Fails)?;
        Ok(Self {
            cfg: cfg.clone(),
            keys: RwLock::new(Arc::new(keys)),
            revoked: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes whenever keys were revoked.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    /// Whether `key` still belongs to `principal`.
    pub fn holds(&self, key: &[u8; 32], principal: &Principal) -> bool {
        let idx = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        idx.get(key) == Some(principal)
    }

    /// Tenant names (the bounded set of `tenant` metric labels).
    pub fn tenants(&self) -> Vec<String> {
        if self.cfg.dev_mode {
            vec![DEV_TENANT.to_string()]
        } else {
            self.cfg.tenants.keys().cloned().collect()
        }
    }

    /// Reads key files again. A file that is gone revokes its keys (fail closed); a
    /// malformed one keeps the previous keys in force (a half-written secret must not lock
    /// everyone out). Sessions of revoked keys are told.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let idx = keys::index(self.cfg.tenants.iter(), keys::Missing::Revokes)?;
        let n = idx.len();
        let old = std::mem::replace(
            &mut *self.keys.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(idx.clone()),
        );
        let lost = old.iter().filter(|(k, p)| idx.get(*k) != Some(*p)).count();
        if lost > 0 {
            tracing::warn!(revoked = lost, "API keys revoked by a key file change");
            self.revoked.send_modify(|n| *n += 1);
        }
        Ok(n)
    }

    /// Re-reads key files every `auth.reload_ms` until `stop`.
    pub fn spawn_reload(self: &Arc<Self>, stop: CancellationToken) {
        if self.cfg.tenants.values().all(|t| t.keys_file.is_none()) {
            return;
        }
        let me = self.clone();
        let every = Duration::from_millis(self.cfg.reload_ms);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = me.reload() {
                    tracing::error!(error = %e, "key file reload failed; keeping the previous keys");
                }
            }
        });
    }

    /// The holder of `key`, if any.
    pub fn lookup(&self, key: &str) -> Option<Principal> {
        let idx = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        idx.get(&keys::hash(key)).cloned()
    }

    fn resolve(&self, key: Option<&str>) -> Result<Principal, AuthError> {
        self.credential(key).map(|c| c.principal)
    }

    fn credential(&self, key: Option<&str>) -> Result<Credential, AuthError> {
        if self.cfg.dev_mode {
            return Ok(Credential {
                principal: Principal::dev(),
                key: None,
            });
        }
        let key = key.ok_or(AuthError::Missing)?;
        let principal = self.lookup(key).ok_or(AuthError::Invalid)?;
        Ok(Credential {
            principal,
            key: Some(keys::hash(key)),
        })
    }

    /// An HTTP request: `Authorization: Bearer KEY`.
    pub fn http(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        self.resolve(bearer(headers))
    }

    /// A WebSocket upgrade: the Origin check, then the key from `Authorization` or from a
    /// `confab.bearer.KEY` subprotocol (browsers).
    pub fn websocket(&self, headers: &HeaderMap) -> Result<Credential, AuthError> {
        self.check_origin(headers)?;
        let from_protocol = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX));
        self.credential(bearer(headers).or(from_protocol))
    }

    /// Cross-site WebSocket hijacking defence: a browser always sends `Origin`; it must be
    /// the server's own or listed. Non-browser clients send none and are judged by key alone.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim();
        let allowed = self
            .cfg
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o == origin)
            || same_origin(origin, headers);
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Origin(origin.chars().take(200).collect()))
        }
    }
}

/// `Authorization: Bearer KEY` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// The page confab serves itself: `Origin`'s host equals the `Host` the browser connected to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{KeyEntry, TenantConfig};

    fn auth(origins: &[&str]) -> Authenticator {
        let mut cfg = AuthConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..AuthConfig::default()
        };
        for (tenant, user, key) in [("acme", "ann", "k-acme"), ("beta", "bob", "k-beta")] {
            cfg.tenants.insert(
                tenant.into(),
                TenantConfig {
                    keys: vec![KeyEntry {
                        user: user.into(),
                        sha256: keys::hash_text(key),
                    }],
                    ..TenantConfig::default()
                },
            );
        }
        Authenticator::new(&cfg).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                poem::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_map_to_their_tenant_only() {
        let a = auth(&[]);
        let p = a
            .http(&headers(&[("authorization", "Bearer k-beta")]))
            .unwrap();
        assert_eq!((&*p.tenant, &*p.user), ("beta", "bob"));
        assert_eq!(a.http(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            a.http(&headers(&[("authorization", "Bearer k-acmE")])),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.http(&headers(&[("authorization", "Basic k-acme")])),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn websocket_key_by_subprotocol_and_origin_list() {
        let a = auth(&["https://app.example.com"]);
        let ok = headers(&[
            ("host", "confab.local:8787"),
            ("origin", "https://app.example.com"),
            ("sec-websocket-protocol", "confab.v1, confab.bearer.k-acme"),
        ]);
        assert_eq!(&*a.websocket(&ok).unwrap().principal.tenant, "acme");
        let same = headers(&[
            ("host", "confab.local:8787"),
            ("origin", "http://confab.local:8787"),
            ("authorization", "Bearer k-acme"),
        ]);
        assert!(a.websocket(&same).is_ok());
        let evil = headers(&[
            ("host", "confab.local:8787"),
            ("origin", "https://evil.example"),
            ("authorization", "Bearer k-acme"),
        ]);
        assert!(matches!(a.websocket(&evil), Err(AuthError::Origin(_))));
    }
}
