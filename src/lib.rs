//! confab: a realtime, collaborative, retrieval-augmented chat server.
//!
//! [`run`] starts the whole server from a [`Config`]; the binary and the integration tests
//! both use it, so tests exercise exactly what ships.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod embedding;
pub mod error;
pub mod ingest;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod providers;
pub mod retrieval;
pub mod rooms;
pub mod safety;
pub mod telemetry;
pub mod tools;
pub mod vector;
pub mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use poem::Server;
use poem::listener::Acceptor;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::app::AppState;
use crate::chat::chain::Models;
use crate::config::{VectorBackend, ms};
use crate::providers::ProviderError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("retrieval: {0}")]
    Retrieval(#[from] retrieval::RetrievalError),
    #[error("ingestion: {0}")]
    Ingest(ingest::IngestError),
    #[error("API keys: {0}")]
    Keys(#[from] auth::KeyFileError),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// A started server.
pub struct Running {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves once the server has drained and stopped after `shutdown` was cancelled.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Binds, starts serving in the background and returns; cancel `shutdown` to drain and stop.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    config.finalize()?;
    // reqwest is built without a bundled crypto provider; ring is the one we ship.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let models = Models::from_config(&config)?;
    let auth = std::sync::Arc::new(auth::Authenticator::new(&config.auth)?);
    if config.auth.dev_mode {
        tracing::warn!("auth.dev_mode is on: every request is tenant `default`, no API key needed");
    }
    let life = std::sync::Arc::new(lifecycle::Lifecycle::default());
    let cluster = cluster::Cluster::start(&config, life.background.clone())?;
    let retrieval = start_retrieval(&config, cluster.as_ref(), &life).await?;
    if cluster.is_some() && retrieval.is_some() && config.vector.backend == VectorBackend::Edge {
        tracing::warn!(
            "cluster.backend = \"redis\" with vector.backend = \"edge\": document records and jobs are shared, \
             but each node searches only the chunks it indexed itself; run several nodes with vector.backend = \"remote\""
        );
    }
    let bind = config.server.bind;
    let acceptor = net::NoDelayAcceptor::bind(bind)
        .await
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    let addr = acceptor
        .socket_addr()
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    let ingest = match &retrieval {
        Some(r) => Some(
            ingest::Ingestor::start(
                r.clone(),
                ingest::IngestSetup {
                    cfg: config.ingest.clone(),
                    data_dir: &config.vector.data_dir,
                    tokenizer_json: &config.embedding.model_dir.join("tokenizer.json"),
                    cluster: cluster.clone().map(|c| (c, config.cluster.upload_bytes)),
                },
                life.background.clone(),
                &life.workers,
            )
            .await
            .map_err(StartError::Ingest)?,
        ),
        None => None,
    };
    auth.spawn_reload(life.background.clone());
    // The tool box exists when there is a tool to offer: an MCP server's, or follow-up
    // searches of the documents.
    let search = retrieval.clone().filter(|_| config.turn.search_tool);
    let tools = if config.mcp.servers.is_empty() && search.is_none() {
        None
    } else {
        Some(tools::ToolBox::start(&config, cluster.clone(), search, &life).await)
    };
    let services = app::Services {
        retrieval,
        ingest,
        cluster,
        tools,
    };
    let state = AppState::new(config, models, services, life, auth);
    providers::probe::spawn(
        state.upstreams.clone(),
        state.config.providers.clone(),
        Duration::from_secs(30),
        state.life.background.clone(),
    );
    tracing::info!(%addr, "confab listening");
    let task = tokio::spawn(serve(acceptor, state, shutdown));
    Ok(Running { addr, task })
}

/// The embedding model and the vector store, when retrieval is on; in cluster mode its
/// corpus versions are the cluster's.
async fn start_retrieval(
    config: &Config,
    cluster: Option<&std::sync::Arc<cluster::Cluster>>,
    life: &lifecycle::Lifecycle,
) -> Result<Option<std::sync::Arc<retrieval::Retrieval>>, StartError> {
    if !config.retrieval.enabled {
        tracing::info!("retrieval disabled");
        return Ok(None);
    }
    let mut r = retrieval::Retrieval::start(config).await?;
    if let Some(c) = cluster {
        let shared = retrieval::SharedVersions::start(c.clone(), life.background.clone());
        r = r.with_versions(Box::new(shared));
    }
    Ok(Some(std::sync::Arc::new(r)))
}

async fn serve<A>(acceptor: A, state: AppState, shutdown: CancellationToken) -> std::io::Result<()>
where
    A: Acceptor + 'static,
{
    let stop_accepting = CancellationToken::new();
    let http = tokio::spawn(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            api::routes(state.clone()),
            stop_accepting.clone().cancelled_owned(),
            Some(Duration::from_secs(5)),
        ),
    );
    shutdown.cancelled().await;
    let life = &state.life;
    tracing::info!("shutdown: draining");
    life.begin_drain();
    life.background.cancel();
    stop_accepting.cancel();

    life.turns.close();
    let grace = ms(state.config.server.shutdown_grace_ms);
    if timeout(grace, life.turns.wait()).await.is_err() {
        tracing::warn!("shutdown: grace period over, cancelling running turns");
        life.turn_cancel.cancel();
        let _ = timeout(Duration::from_secs(5), life.turns.wait()).await;
    }
    life.sessions_close.cancel();
    life.sessions.close();
    if timeout(Duration::from_secs(5), life.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some sessions did not close in time");
    }
    state.rooms.flush(Duration::from_secs(2)).await;
    life.workers.close();
    if timeout(Duration::from_secs(10), life.workers.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: an ingestion job did not stop in time");
    }
    match http.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}
