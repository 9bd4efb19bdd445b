//! Server-side tools: MCP servers whose tools the model may call in rooms and through the
//! RAG alias, and what one call may take (time, concurrency, cost).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[mcp]`: the MCP servers confab connects to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    pub servers: BTreeMap<String, McpServer>,
}

/// `[mcp.servers.NAME]`: one server, reached over streamable HTTP (`url`) or stdio
/// (`command` + `args`, started and kept by confab).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpServer {
    pub url: Option<String>,
    pub command: Option<String>,
    pub args: Vec<String>,
    /// The tools offered to models (the server's names); empty: every tool it lists.
    pub tools: Vec<String>,
    /// Connecting and listing the tools, per try (a server that is down is retried).
    pub connect_timeout_ms: u64,
    /// One call's time, after which it is abandoned (`timeout` status).
    pub timeout_ms: u64,
    /// Calls of one tool running at once (across the cluster under the Redis backend); more
    /// wait their turn within the call's timeout.
    pub max_concurrency: u32,
    /// What one call costs, counted against `turn.max_cost_usd`.
    pub cost_usd: f64,
    /// Limits of single tools, by name; what one leaves out is the server's.
    pub per_tool: BTreeMap<String, ToolLimitsOverride>,
}

/// What one call of a tool may take (see [`McpServer`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToolLimits {
    pub timeout_ms: u64,
    pub max_concurrency: u32,
    pub cost_usd: f64,
}

/// A tool's own limits; what it leaves out comes from its server's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolLimitsOverride {
    pub timeout_ms: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub cost_usd: Option<f64>,
}

impl Default for McpServer {
    fn default() -> Self {
        Self {
            url: None,
            command: None,
            args: Vec::new(),
            tools: Vec::new(),
            connect_timeout_ms: 10_000,
            timeout_ms: 30_000,
            max_concurrency: 4,
            cost_usd: 0.0,
            per_tool: BTreeMap::new(),
        }
    }
}

impl McpServer {
    /// The limits of tool `name`.
    pub fn limits_of(&self, name: &str) -> ToolLimits {
        let o = self.per_tool.get(name).cloned().unwrap_or_default();
        ToolLimits {
            timeout_ms: o.timeout_ms.unwrap_or(self.timeout_ms),
            max_concurrency: o.max_concurrency.unwrap_or(self.max_concurrency),
            cost_usd: o.cost_usd.unwrap_or(self.cost_usd),
        }
    }
}

impl McpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, s) in &self.servers {
            let at = |key: &str| format!("mcp.servers.{name}.{key}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    format!("mcp.servers.{name}"),
                    "a server name has letters, digits, `_` and `-` only",
                ));
            }
            match (&s.url, &s.command) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(at("url"), "set either url or command"));
                }
                (Some(url), None)
                    if !url.starts_with("http://") && !url.starts_with("https://") =>
                {
                    return Err(invalid(at("url"), "must be an http:// or https:// URL"));
                }
                _ => {}
            }
            let tools = s.per_tool.keys().map(|t| (t.as_str(), s.limits_of(t)));
            for (tool, limits) in std::iter::once(("", s.limits_of(""))).chain(tools) {
                let key = |k: &str| {
                    if tool.is_empty() {
                        at(k)
                    } else {
                        at(&format!("per_tool.{tool}.{k}"))
                    }
                };
                if limits.timeout_ms == 0 {
                    return Err(invalid(key("timeout_ms"), "must be at least 1"));
                }
                if limits.max_concurrency == 0 {
                    return Err(invalid(key("max_concurrency"), "must be at least 1"));
                }
                if !(limits.cost_usd >= 0.0 && limits.cost_usd.is_finite()) {
                    return Err(invalid(
                        key("cost_usd"),
                        "must be a finite amount of 0 or more",
                    ));
                }
            }
            if s.connect_timeout_ms == 0 {
                return Err(invalid(at("connect_timeout_ms"), "must be at least 1"));
            }
        }
        Ok(())
    }
}
