//! Typed configuration: defaults → TOML file → `CONFAB__SECTION__KEY` environment variables.
//!
//! Every section rejects unknown keys so a typo fails at boot instead of being ignored, and
//! [`Config::validate`] names the offending field. This is the only module that reads the
//! process environment.

mod cache;
mod cluster;
mod models;
mod retrieval;
mod secret;
mod telemetry;
mod tenancy;
mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use cache::{CacheConfig, SemanticMode, TenantCache};
pub use cluster::{ClusterBackend, ClusterConfig};
pub use models::{
    ChainConfig, EXTRACTIVE, ProviderEntry, ProviderKind, Quality, RouteRule, TurnConfig,
};
pub use retrieval::{
    EmbeddingConfig, IngestConfig, RetrievalConfig, SearchMode, VectorBackend, VectorConfig,
    default_assets_dir, test_qdrant_url,
};
pub use secret::Secret;
pub use telemetry::TelemetryConfig;
pub use tenancy::{
    AuthConfig, KeyEntry, LimitSet, LimitsConfig, SafetyConfig, ScreenAction, TenantConfig,
    parse_key_hash,
};
pub use tools::{McpConfig, McpServer, ToolLimits, ToolLimitsOverride};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an env variable or a value could not be parsed (figment names the key).
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but is out of range.
    #[error("configuration: `{field}` {reason}")]
    Invalid { field: String, reason: String },
}

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub ws: WsConfig,
    pub rooms: RoomsConfig,
    pub turn: TurnConfig,
    /// Upstream models by name, referenced from chains.
    pub providers: BTreeMap<String, ProviderEntry>,
    /// Fallback chains by name.
    #[serde(default = "models::default_chains")]
    pub chains: BTreeMap<String, ChainConfig>,
    pub routing: RoutingConfig,
    pub retrieval: RetrievalConfig,
    pub embedding: EmbeddingConfig,
    pub vector: VectorConfig,
    pub ingest: IngestConfig,
    pub openai: OpenAiConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub safety: SafetyConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    /// Server-side tools over MCP.
    pub mcp: McpConfig,
    /// OpenTelemetry traces over OTLP.
    pub telemetry: TelemetryConfig,
}

/// Cheap-first routing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub rules: Vec<RouteRule>,
}

/// The OpenAI-compatible endpoint (`/v1/chat/completions`, `/v1/models`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The model name that runs the default chain with retrieval and citations; every chain
    /// name is a model too (a plain gateway, no retrieval).
    pub rag_model: String,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            rag_model: "confab-rag".into(),
        }
    }
}

/// Listener and lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// How long running turns may take to finish after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// Delay suggested to clients in the 1012 close frame before they reconnect.
    pub reconnect_hint_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            shutdown_grace_ms: 15_000,
            reconnect_hint_ms: 1_000,
        }
    }
}

/// WebSocket session limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Largest client frame accepted; larger ones close the session with 1009.
    pub max_frame_bytes: usize,
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Frames buffered per session before it counts as a slow consumer (its writer holds at
    /// most 64 more, taken from the queue for one write).
    pub outbound_queue: usize,
    /// Server ping interval, also announced in `welcome`.
    pub heartbeat_ms: u64,
    /// A session that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// A single socket write slower than this marks the client as a slow consumer.
    pub write_timeout_ms: u64,
    /// Socket read buffer per connection. tungstenite's 128 KiB default is for high read
    /// load; chat clients send little, and thousands of idle sessions add up.
    pub read_buffer_bytes: usize,
    /// Several replicas: the ingress routes `/v1/ws?room=NAME` by a hash of the room, so a
    /// room's members meet on one pod. On: a connection must name its room in the URL and
    /// is pinned to it; joining another room closes it (4009) with the URL to reconnect to.
    pub room_routing: bool,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_prompt_chars: 8_000,
            outbound_queue: 1_024,
            heartbeat_ms: 20_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 4 * 1024,
            room_routing: false,
        }
    }
}

/// Room limits and buffers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Most rooms held in memory at once.
    pub max_rooms: usize,
    /// Most members per room.
    pub max_members: usize,
    /// Prompts waiting behind the running turn before `room_busy`.
    pub max_queued_turns: usize,
    /// Completed turns kept as conversation context.
    pub history_turns: usize,
    /// Events kept per room for resume.
    pub replay_events: usize,
    /// Bytes of serialised events kept per room for resume.
    pub replay_bytes: usize,
    /// Most rooms one tenant may hold at once (its share of `max_rooms`).
    pub max_rooms_per_tenant: usize,
    /// Joins one WebSocket connection may make per minute.
    pub opens_per_connection_per_min: u32,
    /// A room nobody is in (and that is not answering) gives its slot back after this long;
    /// its log and history are kept for resume, bounded by `idle_ttl_ms` and `parked_bytes`.
    pub empty_ttl_ms: u64,
    /// How long an empty room's log and history are kept for a member to come back.
    pub idle_ttl_ms: u64,
    /// Bytes of logs and histories kept for empty rooms, all rooms together (least recently
    /// used go first; a room whose log went comes back with a new epoch).
    pub parked_bytes: u64,
    /// Answer pieces that come within this many ms of the room's last delta go out as one
    /// `delta` (0 = every upstream piece is its own delta). The first piece after a quiet
    /// window is never held, so this delays only streams faster than one delta per window.
    pub coalesce_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 10_000,
            max_members: 256,
            max_queued_turns: 8,
            history_turns: 20,
            replay_events: 4_096,
            replay_bytes: 4 * 1024 * 1024,
            max_rooms_per_tenant: 1_000,
            opens_per_connection_per_min: 60,
            empty_ttl_ms: 10_000,
            idle_ttl_ms: 30 * 60 * 1_000,
            parked_bytes: 256 * 1024 * 1024,
            coalesce_ms: 50,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `confab=debug,info`.
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            ws: WsConfig::default(),
            rooms: RoomsConfig::default(),
            turn: TurnConfig::default(),
            providers: BTreeMap::new(),
            chains: models::default_chains(),
            routing: RoutingConfig::default(),
            retrieval: RetrievalConfig::default(),
            embedding: EmbeddingConfig::default(),
            vector: VectorConfig::default(),
            ingest: IngestConfig::default(),
            openai: OpenAiConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            safety: SafetyConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
            mcp: McpConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then the TOML file if given, then `CONFAB__SECTION__KEY` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file)?)
    }

    /// Like [`Config::load`], but key files are listed, not read: for checking a config
    /// rendered for another machine (a Helm chart's), whose mounted secrets are not here.
    pub fn check(file: &Path) -> Result<Vec<std::path::PathBuf>, ConfigError> {
        let mut cfg: Config = Self::figment(Some(file))?.extract().map_err(Box::new)?;
        let files = cfg
            .providers
            .values_mut()
            .filter_map(|p| p.api_key_file.take())
            .chain(
                cfg.auth
                    .tenants
                    .values()
                    .filter_map(|t| t.keys_file.clone()),
            )
            .collect();
        cfg.finalize()?;
        Ok(files)
    }

    fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config".into(),
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            // JSON too: Helm renders values with `toJson` (its `toToml` writes every number
            // as a float, which integer settings refuse).
            fig = if path.extension().is_some_and(|e| e == "json") {
                fig.merge(Json::file_exact(path))
            } else {
                fig.merge(Toml::file_exact(path))
            };
        }
        Ok(fig.merge(Env::prefixed("CONFAB__").split("__")))
    }

    /// Parses a TOML string over the defaults (no environment); for tests and tools.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.finalize()?;
        Ok(cfg)
    }

    /// Validates and fills derived values (per-kind defaults, key files, `extractive` as the
    /// last link of every chain). Idempotent; [`crate::run`] calls it too.
    pub fn finalize(&mut self) -> Result<(), ConfigError> {
        self.validate()?;
        models::finalize(
            &mut self.providers,
            &mut self.chains,
            &self.routing.rules,
            &self.turn,
        )
    }

    /// Range checks that serde cannot express; errors name the field.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sessions()?;
        self.validate_pipeline()?;
        self.validate_cache()?;
        self.cluster.validate()?;
        self.mcp.validate()?;
        self.telemetry.validate()?;
        self.turn.validate()?;
        if self.cluster.backend == ClusterBackend::Redis && self.ws.room_routing {
            return Err(invalid(
                "ws.room_routing",
                "must be off with cluster.backend = \"redis\": every node serves every room",
            ));
        }
        if self.cluster.backend == ClusterBackend::Redis
            && self.cluster.upload_bytes < self.ingest.max_upload_bytes as u64
        {
            return Err(invalid(
                "cluster.upload_bytes",
                "must be at least ingest.max_upload_bytes, or no upload that large would fit",
            ));
        }
        self.auth.validate(&self.limits)?;
        if self.embedding.gpu && !cfg!(feature = "gpu") {
            return Err(invalid(
                "embedding.gpu",
                "needs a build with the `gpu` cargo feature",
            ));
        }
        Ok(())
    }

    /// WebSocket sessions and rooms.
    fn validate_sessions(&self) -> Result<(), ConfigError> {
        let (ws, rooms) = (&self.ws, &self.rooms);
        positive(&[
            ("ws.max_frame_bytes", ws.max_frame_bytes as u64),
            ("ws.max_prompt_chars", ws.max_prompt_chars as u64),
            ("ws.outbound_queue", ws.outbound_queue as u64),
            ("ws.heartbeat_ms", ws.heartbeat_ms),
            ("ws.write_timeout_ms", ws.write_timeout_ms),
            ("ws.read_buffer_bytes", ws.read_buffer_bytes as u64),
        ])?;
        if ws.idle_timeout_ms <= ws.heartbeat_ms {
            let reason = format!("must be greater than ws.heartbeat_ms ({})", ws.heartbeat_ms);
            return Err(invalid("ws.idle_timeout_ms", reason));
        }
        positive(&[
            ("rooms.max_rooms", rooms.max_rooms as u64),
            ("rooms.max_members", rooms.max_members as u64),
            ("rooms.max_queued_turns", rooms.max_queued_turns as u64),
            ("rooms.replay_events", rooms.replay_events as u64),
            ("rooms.replay_bytes", rooms.replay_bytes as u64),
            (
                "rooms.max_rooms_per_tenant",
                rooms.max_rooms_per_tenant as u64,
            ),
            (
                "rooms.opens_per_connection_per_min",
                rooms.opens_per_connection_per_min.into(),
            ),
            ("rooms.empty_ttl_ms", rooms.empty_ttl_ms),
        ])?;
        if rooms.coalesce_ms > 1_000 {
            return Err(invalid(
                "rooms.coalesce_ms",
                "must be at most 1000 (a held piece waits up to this long)",
            ));
        }
        Ok(())
    }

    /// Embedding, retrieval, ingestion and the vector store.
    fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let (e, i) = (&self.embedding, &self.ingest);
        positive(&[
            ("embedding.dim", e.dim as u64),
            ("embedding.workers", e.workers as u64),
            ("embedding.intra_threads", e.intra_threads as u64),
            ("embedding.max_batch", e.max_batch as u64),
            ("embedding.max_length", e.max_length as u64),
            ("embedding.queue_capacity", e.queue_capacity as u64),
            (
                "embedding.query_queue_capacity",
                e.query_queue_capacity as u64,
            ),
            ("retrieval.top_k", self.retrieval.top_k as u64),
            ("ingest.max_upload_bytes", i.max_upload_bytes as u64),
            ("ingest.queue_capacity", i.queue_capacity as u64),
            ("ingest.workers", i.workers as u64),
            ("ingest.embed_batch", i.embed_batch as u64),
            ("ingest.parallel_batches", i.parallel_batches as u64),
            ("ingest.upsert_batch", i.upsert_batch as u64),
            ("ingest.parse_timeout_ms", i.parse_timeout_ms),
            ("ingest.max_text_ratio", i.max_text_ratio as u64),
            ("ingest.max_inflate_ratio", i.max_inflate_ratio),
            ("ingest.max_chunks", i.max_chunks as u64),
        ])?;
        if i.parse_memory_bytes < 64 << 20 {
            return Err(invalid(
                "ingest.parse_memory_bytes",
                "must be at least 64 MiB",
            ));
        }
        if i.chunk_tokens < 32 || i.chunk_tokens > e.max_length {
            let reason = format!(
                "must be between 32 and embedding.max_length ({})",
                e.max_length
            );
            return Err(invalid("ingest.chunk_tokens", reason));
        }
        if i.overlap_tokens * 2 > i.chunk_tokens {
            return Err(invalid(
                "ingest.overlap_tokens",
                "must be at most half of ingest.chunk_tokens",
            ));
        }
        if !(self.retrieval.rrf_k > 0.0 && self.retrieval.bm25_avg_len > 0.0) {
            return Err(invalid(
                "retrieval.rrf_k / retrieval.bm25_avg_len",
                "must be greater than 0",
            ));
        }
        positive(&[("vector.timeout_ms", self.vector.timeout_ms)])
    }

    fn validate_cache(&self) -> Result<(), ConfigError> {
        if !(self.cache.semantic_threshold > 0.0 && self.cache.semantic_threshold <= 1.0) {
            return Err(invalid("cache.semantic_threshold", "must be in (0, 1]"));
        }
        positive(&[(
            "cache.max_entries_per_scope",
            self.cache.max_entries_per_scope as u64,
        )])
    }
}

/// Milliseconds from config as a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The first of `fields` that is 0, as an error.
fn positive(fields: &[(&str, u64)]) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((field, _)) => Err(invalid(*field, "must be greater than 0")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[auth]\ndev_mode = true\n[ws]\nmax_frame_byte = 10\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_field() {
        let err = Config::from_toml(
            "[auth]\ndev_mode = true\n[ws]\nheartbeat_ms = 5000\nidle_timeout_ms = 1000\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("ws.idle_timeout_ms"), "{err}");
        let err = Config::from_toml(
            "[auth]\ndev_mode = true\n[providers.fast]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("providers.fast.base_url"), "{err}");
        let err =
            Config::from_toml("[auth]\ndev_mode = true\n[chains.default]\nlinks = [\"nope\"]\n")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(err.contains("chains.default.links"), "{err}");
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../confab.example.toml");
        let cfg = Config::from_toml(text).map_err(|e| e.to_string());
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.chains["default"].links,
            ["mini", "claude", "extractive"]
        );
        assert_eq!(cfg.routing.rules.len(), 2);
        assert_eq!(cfg.auth.tenants["acme"].limits.usd_per_day, Some(50.0));
        assert_eq!(cfg.limits.user.concurrent_turns, Some(4));
    }

    #[test]
    fn auth_needs_tenants_or_an_explicit_dev_mode() {
        let err = |toml: &str| {
            Config::from_toml(toml)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("").contains("auth.tenants"), "no tenant, no dev mode");
        let hash = format!("sha256:{}", "ab".repeat(32));
        let tenant =
            format!("[auth.tenants.acme]\nkeys = [{{ user = \"a\", sha256 = \"{hash}\" }}]\n");
        assert_eq!(err(&tenant), "");
        assert!(err(&format!("[auth]\ndev_mode = true\n{tenant}")).contains("auth.dev_mode"));
        let bad = tenant.replace(&hash, "cfk_plaintext_key");
        assert!(
            err(&bad).contains("keys[0].sha256"),
            "a plaintext key is refused"
        );
        assert!(err(&tenant.replace("acme", "\"Acme Corp\"")).contains("tenant names"));
        let zero = format!("{tenant}[auth.tenants.acme.limits]\nusd_per_day = 0.0\n");
        assert!(err(&zero).contains("usd_per_day"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn file_then_env_override() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[auth]\ndev_mode = true\n[providers.main]\nmodel = \"from-file\"\napi_key = \"sk-1\"\n",
            )?;
            jail.set_env("CONFAB__PROVIDERS__MAIN__MODEL", "from-env");
            jail.set_env("CONFAB__CHAINS__DEFAULT__LINKS", "[main]");
            let cfg = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            let main = &cfg.providers["main"];
            assert_eq!(main.model, "from-env");
            assert_eq!(main.api_key.expose(), "sk-1");
            assert_eq!(main.base_url, "https://api.openai.com/v1");
            assert_eq!(cfg.chains["default"].links, ["main", "extractive"]);
            assert!(!format!("{cfg:?}").contains("sk-1"));
            jail.set_env("CONFAB__WS__NOPE", "1");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn two_env_variables_turn_cluster_mode_on() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONFAB__AUTH__DEV_MODE", "true");
            jail.set_env("CONFAB__CLUSTER__BACKEND", "redis");
            jail.set_env(
                "CONFAB__CLUSTER__REDIS_URL",
                "redis://:hunter2@127.0.0.1:6379",
            );
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.cluster.backend, ClusterBackend::Redis);
            assert!(
                !format!("{cfg:?}").contains("hunter2"),
                "the URL is a secret"
            );
            jail.set_env("CONFAB__WS__ROOM_ROUTING", "true");
            let err = Config::load(None).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("ws.room_routing")));
            jail.set_env("CONFAB__WS__ROOM_ROUTING", "false");
            jail.set_env("CONFAB__CLUSTER__UPLOAD_BYTES", "1000");
            let err = Config::load(None).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("cluster.upload_bytes")));
            jail.set_env("CONFAB__CLUSTER__UPLOAD_BYTES", "536870912");
            jail.set_env("CONFAB__CLUSTER__REDIS_URL", "http://nope");
            assert!(Config::load(None).is_err(), "not a redis URL");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn json_file_as_helm_renders_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.json",
                r#"{"server": {"bind": "0.0.0.0:8787", "shutdown_grace_ms": 15000}, "auth": {"dev_mode": true},
                    "ws": {"room_routing": true}, "vector": {"backend": "remote", "url": "http://q:6334"}}"#,
            )?;
            let cfg = Config::load(Some(Path::new("c.json"))).map_err(|e| e.to_string())?;
            assert!(cfg.ws.room_routing);
            assert_eq!(cfg.server.shutdown_grace_ms, 15_000);
            jail.create_file(
                "bad.json",
                r#"{"auth": {"dev_mode": true}, "server": {"shutdown_grace_ms": "soon"}}"#,
            )?;
            assert!(Config::load(Some(Path::new("bad.json"))).is_err());
            Ok(())
        });
    }
}
