//! Shared application state handed to every edge (HTTP routes, WebSocket sessions).

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::chat::TurnEngine;
use crate::chat::chain::Models;
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::limits::Limiter;
use crate::retrieval::Retrieval;
use crate::rooms::Rooms;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub rooms: Arc<Rooms>,
    pub life: Arc<Lifecycle>,
    /// `None` when `retrieval.enabled` is off.
    pub retrieval: Option<Arc<Retrieval>>,
    /// Document ingestion; `None` when retrieval is off.
    pub ingest: Option<Arc<crate::ingest::Ingestor>>,
    /// Last probe of every upstream (`/readyz`).
    pub upstreams: Arc<crate::providers::probe::UpstreamHealth>,
    /// Runs turns for rooms and for the OpenAI-compatible endpoint.
    pub engine: Arc<TurnEngine>,
    /// Renders `/metrics`; `None` if another metrics recorder owns the process.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// API keys → tenants.
    pub auth: Arc<Authenticator>,
    /// Per-tenant and per-user limits and budgets.
    pub limits: Arc<Limiter>,
}

impl AppState {
    /// Wires the domain core from a validated config.
    pub fn new(
        config: Config,
        models: Models,
        retrieval: Option<Arc<Retrieval>>,
        ingest: Option<Arc<crate::ingest::Ingestor>>,
        life: Arc<Lifecycle>,
        auth: Arc<Authenticator>,
    ) -> Self {
        let metrics = crate::metrics::install();
        if metrics.is_some() {
            let providers: Vec<&str> = config
                .providers
                .keys()
                .map(String::as_str)
                .chain([crate::config::EXTRACTIVE])
                .collect();
            let chains: Vec<&str> = config.chains.keys().map(String::as_str).collect();
            crate::metrics::init_series(&providers, &chains, &auth.tenants());
        }
        let cache = config
            .cache
            .enabled
            .then(|| Arc::new(crate::cache::AnswerCache::new(config.cache.clone())));
        let limits = Limiter::new(&config.auth, &config.limits);
        let engine = Arc::new(TurnEngine::new(
            models,
            config.turn.clone(),
            retrieval.clone(),
            cache,
            limits.clone(),
            config.safety.clone(),
        ));
        let rooms = Rooms::new(config.rooms.clone(), engine.clone(), life.clone());
        Self {
            config: Arc::new(config),
            rooms,
            life,
            retrieval,
            ingest,
            upstreams: Arc::new(crate::providers::probe::UpstreamHealth::default()),
            engine,
            metrics,
            auth,
            limits,
        }
    }
}
