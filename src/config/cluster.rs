//! The cluster section (`[cluster]`): where rooms' shared state lives.
//!
//! `local` keeps everything in this process (one node, the embedded default). `redis` puts
//! each room's log, history, turn queue, lease and presence in Redis, so any replica serves
//! any room and a replica that dies loses nothing another one cannot pick up.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid, positive};

/// Which engine holds rooms' shared state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    /// In this process: one node.
    #[default]
    Local,
    /// Redis 7 (or Valkey): any number of nodes.
    Redis,
}

/// Cluster settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub backend: ClusterBackend,
    /// `redis://[:password@]host:port[/db]`, `rediss://…` for TLS. A secret: it may carry a
    /// password, so it is redacted wherever the config is shown.
    pub redis_url: Secret,
    /// This node's name in leases and presence; unique per process. Default: the host name
    /// and a random suffix, so a restarted pod is a new node.
    pub node_id: String,
    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// A node holds a room's turn lease this long after its last renewal: a node that dies
    /// mid-turn has its turn ended (`node_lost`) by another node within this time.
    pub lease_ms: u64,
    /// Longest wait for one Redis call before it counts as a failure.
    pub op_timeout_ms: u64,
    /// Events a room may have waiting to be written to Redis before new ones are refused
    /// (the running turn is cut short): a slow Redis cannot make a node buffer without bound.
    pub outbox_events: usize,
    /// Most bytes of uploads Redis holds, cluster-wide, for ingestion jobs not yet ended
    /// (each upload is at most `ingest.max_upload_bytes`); past it uploads are refused as
    /// `overloaded` until jobs finish.
    pub upload_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            backend: ClusterBackend::Local,
            redis_url: Secret::default(),
            node_id: default_node_id(),
            key_prefix: "confab".into(),
            lease_ms: 5_000,
            op_timeout_ms: 2_000,
            outbox_events: 4_096,
            upload_bytes: 512 << 20,
        }
    }
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("cluster.op_timeout_ms", self.op_timeout_ms),
            ("cluster.outbox_events", self.outbox_events as u64),
            ("cluster.upload_bytes", self.upload_bytes),
        ])?;
        if self.lease_ms < 500 {
            return Err(invalid("cluster.lease_ms", "must be at least 500"));
        }
        if self.node_id.trim().is_empty() || self.node_id.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "cluster.node_id",
                "must be a non-empty name without control characters",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(invalid(
                "cluster.key_prefix",
                "must be non-empty and contain no braces (they mark Redis hash slots)",
            ));
        }
        if self.backend == ClusterBackend::Redis {
            let url = self.redis_url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "cluster.redis_url",
                    "must be a redis:// or rediss:// URL when cluster.backend = \"redis\"",
                ));
            }
        }
        Ok(())
    }
}

/// The host name (a pod's name) and 6 random hex digits.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "confab".into());
    format!("{host}-{:06x}", fastrand::u32(..0x100_0000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_needs_a_url_and_redacts_it() {
        let mut c = ClusterConfig {
            backend: ClusterBackend::Redis,
            ..ClusterConfig::default()
        };
        assert!(c.validate().is_err(), "no url");
        c.redis_url = Secret::new("rediss://:hunter2@redis:6380/0");
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"));
        c.key_prefix = "a{b}".into();
        assert!(c.validate().is_err(), "braces");
    }

    #[test]
    fn node_ids_differ_per_process_start() {
        assert_ne!(default_node_id(), default_node_id());
    }
}
