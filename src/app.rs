//! Shared application state handed to every edge (HTTP routes, WebSocket sessions).

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::chat::chain::Models;
use crate::chat::{EngineParts, TurnEngine};
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::limits::{Limit, Limiter, SharedLimits};
use crate::retrieval::Retrieval;
use crate::rooms::{Backend, LocalBackplane, Rooms};

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
    /// Cluster mode's shared store; `None` with `cluster.backend = "local"`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The services a config turned on, started before the state that wires them.
#[derive(Default)]
pub struct Services {
    pub retrieval: Option<Arc<Retrieval>>,
    pub ingest: Option<Arc<crate::ingest::Ingestor>>,
    /// Cluster mode's shared store (see [`crate::cluster::Cluster::start`]).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Server-side tools (MCP), when any server is configured.
    pub tools: Option<Arc<crate::tools::ToolBox>>,
}

impl AppState {
    /// Wires the domain core from a validated config.
    pub fn new(
        config: Config,
        models: Models,
        services: Services,
        life: Arc<Lifecycle>,
        auth: Arc<Authenticator>,
    ) -> Self {
        let Services {
            retrieval,
            ingest,
            cluster,
            tools,
        } = services;
        let metrics = crate::metrics::install();
        if metrics.is_some() {
            init_series(&config, &models, &auth.tenants());
        }
        let cache = config
            .cache
            .enabled
            .then(|| Arc::new(crate::cache::AnswerCache::new(config.cache.clone())));
        let limits = match &cluster {
            None => Limiter::new(&config.auth, &config.limits),
            Some(c) => {
                let stop = life.background.clone();
                let store = SharedLimits::start(c.clone(), &config.auth, &config.limits, stop);
                Limiter::with_store(&config.limits, Box::new(store))
            }
        };
        let engine = Arc::new(TurnEngine::new(EngineParts {
            models,
            cfg: config.turn.clone(),
            retrieval: retrieval.clone(),
            cache,
            limits: limits.clone(),
            safety: config.safety.clone(),
            tools,
            capture: crate::chat::Capture {
                ratio: config.telemetry.capture_ratio,
                chars: config.telemetry.capture_chars,
            },
        }));
        let backend = match &cluster {
            None => Backend::Local(Arc::new(LocalBackplane::new(&config.rooms))),
            Some(c) => Backend::Shared {
                cluster: c.clone(),
                outbox: config.cluster.outbox_events,
            },
        };
        let rooms = Rooms::new(config.rooms.clone(), backend, engine.clone(), life.clone());
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
            cluster,
        }
    }
}

/// The metric series known at boot, from the layers that own their label values.
fn init_series(config: &Config, models: &Models, tenants: &[String]) {
    let providers: Vec<&str> = config
        .providers
        .keys()
        .map(String::as_str)
        .chain([crate::config::EXTRACTIVE])
        .collect();
    let breakers: Vec<&str> = providers
        .iter()
        .copied()
        .filter(|p| {
            models
                .link(p)
                .is_some_and(|l| l.breaker.exported_state().is_some())
        })
        .collect();
    let chains: Vec<&str> = config.chains.keys().map(String::as_str).collect();
    let limits = Limit::ALL.map(Limit::as_str);
    crate::metrics::init_series(&crate::metrics::BootLabels {
        providers: &providers,
        breakers: &breakers,
        chains: &chains,
        tenants,
        limits: &limits,
    });
}
