//! Tenants, API keys, limits and the input/output guards: who may call, how much, and what
//! is screened. Keys are stored as SHA-256 hashes only, so a leaked config file or Helm
//! values dump does not leak a usable credential.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Authentication of HTTP and WebSocket clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// One tenant (`default`), no keys: for a laptop. Never in production; off by default,
    /// and the server refuses to start with neither this nor a tenant.
    pub dev_mode: bool,
    /// Origins (`https://app.example.com`) allowed to open WebSockets from a browser, on
    /// top of the server's own origin. `*` allows any (not recommended). Clients that send
    /// no `Origin` (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// How often key files are read again, so rotated keys apply without a restart.
    pub reload_ms: u64,
    /// Tenants by name (the name is what isolates data: rooms, documents, caches, budgets).
    pub tenants: BTreeMap<String, TenantConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            dev_mode: false,
            allowed_origins: Vec::new(),
            reload_ms: 30_000,
            tenants: BTreeMap::new(),
        }
    }
}

/// One tenant: its keys and limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Keys inline. Several per user is how keys are rotated: add the new one, move
    /// clients over, remove the old one.
    pub keys: Vec<KeyEntry>,
    /// A mounted secret file with one `user sha256:HEX` per line (`#` comments); read at
    /// boot and every `auth.reload_ms`.
    pub keys_file: Option<PathBuf>,
    /// Limits of the whole tenant; unset fields take `limits.tenant`.
    pub limits: LimitSet,
    /// Limits of each user (API key holder) of the tenant; unset fields take `limits.user`.
    pub user_limits: LimitSet,
    /// The server-side tools its turns may offer the model (tool names as the model sees
    /// them, `search_documents` included); absent: every configured tool.
    pub tools: Option<Vec<String>>,
}

/// One API key, as its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key: the unit of per-user limits.
    pub user: String,
    /// `sha256:` and 64 hex digits (`confab key new` prints it).
    pub sha256: String,
}

/// Rate limits and budgets; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSet {
    /// HTTP requests, WebSocket upgrades and prompts per minute.
    pub requests_per_min: Option<u32>,
    /// Turns queued or running at once.
    pub concurrent_turns: Option<u32>,
    /// Open WebSocket connections.
    pub ws_connections: Option<u32>,
    /// Upstream tokens (prompt + completion) per minute.
    pub tokens_per_min: Option<u64>,
    /// Upstream spend per UTC day, in USD.
    pub usd_per_day: Option<f64>,
}

impl LimitSet {
    /// `self`'s fields where set, else `base`'s.
    pub fn over(self, base: LimitSet) -> LimitSet {
        LimitSet {
            requests_per_min: self.requests_per_min.or(base.requests_per_min),
            concurrent_turns: self.concurrent_turns.or(base.concurrent_turns),
            ws_connections: self.ws_connections.or(base.ws_connections),
            tokens_per_min: self.tokens_per_min.or(base.tokens_per_min),
            usd_per_day: self.usd_per_day.or(base.usd_per_day),
        }
    }

    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let zero = [
            ("requests_per_min", self.requests_per_min == Some(0)),
            ("concurrent_turns", self.concurrent_turns == Some(0)),
            ("ws_connections", self.ws_connections == Some(0)),
            ("tokens_per_min", self.tokens_per_min == Some(0)),
            (
                "usd_per_day",
                self.usd_per_day
                    .is_some_and(|v| !(v > 0.0 && v.is_finite())),
            ),
        ];
        match zero.iter().find(|(_, bad)| *bad) {
            Some((name, _)) => Err(ConfigError::Invalid {
                field: format!("{field}.{name}"),
                reason: "must be greater than 0 (leave it out for no limit)".into(),
            }),
            None => Ok(()),
        }
    }
}

/// Defaults for every tenant and user, and how budgets estimate a turn before it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub tenant: LimitSet,
    pub user: LimitSet,
    /// Completion tokens reserved for a provider without `max_tokens`, before the real usage
    /// settles the reservation.
    pub default_output_tokens: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tenant: LimitSet::default(),
            user: LimitSet::default(),
            default_output_tokens: 1_024,
        }
    }
}

/// What to do with text that looks like a prompt injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreenAction {
    /// Do not screen.
    Off,
    /// Keep it, report it (the `tool` event, a metric, the log).
    Flag,
    /// Keep it out: a prompt is refused, a retrieved chunk is not given to the model.
    Block,
}

/// Input and output guards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Prompts that try to override instructions.
    pub prompts: ScreenAction,
    /// Retrieved chunks carrying instructions (indirect injection through documents).
    pub chunks: ScreenAction,
    /// Replace API-key-like strings in answers before they reach clients or the cache.
    pub redact_secrets: bool,
    /// Replace e-mail addresses in answers too.
    pub redact_emails: bool,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            prompts: ScreenAction::Flag,
            chunks: ScreenAction::Block,
            redact_secrets: true,
            redact_emails: false,
        }
    }
}

/// Tenant names end up in data paths, filters and metric labels: keep them plain.
fn check_tenant_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: format!("auth.tenants.{name}"),
            reason: "tenant names are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
        })
    }
}

/// A key hash as written in config: `sha256:` and 64 lowercase or uppercase hex digits.
pub fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.trim().strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

impl AuthConfig {
    /// Boot-time checks; `limits` are the defaults every tenant inherits.
    pub fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        limits.tenant.validate("limits.tenant")?;
        limits.user.validate("limits.user")?;
        if self.dev_mode && !self.tenants.is_empty() {
            return Err(ConfigError::Invalid {
                field: "auth.dev_mode".into(),
                reason: "dev mode serves one keyless tenant; remove auth.tenants or turn it off"
                    .into(),
            });
        }
        if !self.dev_mode && self.tenants.is_empty() {
            return Err(ConfigError::Invalid {
                field: "auth.tenants".into(),
                reason: "no tenant is configured: add [auth.tenants.NAME] with keys \
                         (`confab key new`), or set auth.dev_mode = true for a keyless \
                         single-tenant laptop setup"
                    .into(),
            });
        }
        if self.reload_ms == 0 && self.tenants.values().any(|t| t.keys_file.is_some()) {
            return Err(ConfigError::Invalid {
                field: "auth.reload_ms".into(),
                reason: "must be greater than 0 when a tenant has a keys_file".into(),
            });
        }
        for (name, t) in &self.tenants {
            check_tenant_name(name)?;
            if t.keys.is_empty() && t.keys_file.is_none() {
                return Err(ConfigError::Invalid {
                    field: format!("auth.tenants.{name}"),
                    reason: "has neither keys nor keys_file".into(),
                });
            }
            for (i, k) in t.keys.iter().enumerate() {
                if k.user.trim().is_empty() || k.user.len() > 64 {
                    return Err(ConfigError::Invalid {
                        field: format!("auth.tenants.{name}.keys[{i}].user"),
                        reason: "must be 1-64 characters".into(),
                    });
                }
                if parse_key_hash(&k.sha256).is_none() {
                    return Err(ConfigError::Invalid {
                        field: format!("auth.tenants.{name}.keys[{i}].sha256"),
                        reason: "must be `sha256:` and 64 hex digits (the hash, never the key)"
                            .into(),
                    });
                }
            }
            t.limits.validate(&format!("auth.tenants.{name}.limits"))?;
            t.user_limits
                .validate(&format!("auth.tenants.{name}.user_limits"))?;
        }
        for o in &self.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    field: "auth.allowed_origins".into(),
                    reason: format!("{o:?} is not an origin like https://app.example.com"),
                });
            }
        }
        Ok(())
    }
}
