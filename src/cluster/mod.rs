//! Cluster mode's shared store: Redis, reached through one multiplexed connection for
//! commands and scripts and one for pub/sub. Both reconnect by themselves; while Redis is
//! away every call fails fast (`cluster_unavailable`) instead of queueing, `/readyz` says
//! so, and the node recovers without a restart when Redis returns.
//!
//! This layer knows keys, scripts and bytes, not rooms: `rooms/` builds on it.

mod bus;
mod corpus;
mod docs;
mod keys;
mod limits;
mod ops;
mod scripts;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion};

pub use bus::{BusMsg, Subscription, ephemeral};
pub use docs::{Accepted, JobEntry, NewUpload, Renewed};
pub use keys::RoomKeys;
pub use limits::{LimitKeys, LimitUsage, Refused};
pub use ops::{Cancelled, Claim, Emit, Loaded, LogFrame, RoomParams, Submitted};

use crate::config::{ClusterConfig, RoomsConfig};
use crate::error::ErrorCode;

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cluster store: no answer within {0:?}")]
    Timeout(Duration),
    #[error("cluster store: unexpected reply: {0}")]
    Reply(String),
}

impl From<&ClusterError> for ErrorCode {
    fn from(_: &ClusterError) -> Self {
        ErrorCode::ClusterUnavailable
    }
}

/// Longest a worker's blocking read waits for a new job before it looks again.
pub const JOB_WAIT: Duration = Duration::from_secs(1);

/// The node's handle on the shared store. Cheap to share.
pub struct Cluster {
    conn: ConnectionManager,
    /// For blocking reads only (workers waiting for jobs), so they never hold up `conn`.
    blocking: ConnectionManager,
    bus: Arc<bus::Bus>,
    scripts: scripts::Scripts,
    pub node: String,
    prefix: String,
    pub lease: Duration,
    op_timeout: Duration,
    params: RoomParams,
    /// Whether the last health check reached Redis (false until the first one did).
    up: AtomicBool,
    /// Whether the last health check failed (false before the first one).
    down: AtomicBool,
}

impl Cluster {
    /// Prepares both connections; they connect lazily, so a node boots while Redis is down
    /// (it reports not ready until Redis answers). Fails only on a malformed URL.
    pub fn connect(cfg: &ClusterConfig, rooms: &RoomsConfig) -> Result<Arc<Self>, ClusterError> {
        let info = cfg.redis_url.expose().into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let op_timeout = Duration::from_millis(cfg.op_timeout_ms);
        let base = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(op_timeout))
                .set_response_timeout(Some(op_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
        };
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), base())?;
        let blocking_cfg = base().set_response_timeout(Some(op_timeout + JOB_WAIT));
        let blocking = ConnectionManager::new_lazy_with_config(client.clone(), blocking_cfg)?;
        let bus = Arc::new(bus::Bus::default());
        let router = bus.clone();
        let sub_cfg = base()
            .set_push_sender(move |push: redis::PushInfo| {
                router.route(push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let sub = ConnectionManager::new_lazy_with_config(client, sub_cfg)?;
        bus.attach(sub);
        Ok(Arc::new(Self {
            conn,
            blocking,
            bus,
            scripts: scripts::Scripts::new(),
            node: cfg.node_id.clone(),
            prefix: cfg.key_prefix.clone(),
            lease: Duration::from_millis(cfg.lease_ms),
            op_timeout,
            params: RoomParams::new(rooms),
            up: AtomicBool::new(false),
            down: AtomicBool::new(false),
        }))
    }

    /// The store a config asks for, connected and watched until `stop`: `None` with
    /// `cluster.backend = "local"`.
    pub fn start(
        config: &crate::config::Config,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Option<Arc<Self>>, ClusterError> {
        if config.cluster.backend == crate::config::ClusterBackend::Local {
            return Ok(None);
        }
        let cluster = Self::connect(&config.cluster, &config.rooms)?;
        tokio::spawn(cluster.clone().watch_health(stop));
        Ok(Some(cluster))
    }

    /// The keys of a tenant's room.
    pub fn room_keys(&self, tenant: &str, room: &str) -> RoomKeys {
        RoomKeys::new(&self.prefix, tenant, room)
    }

    /// Whether Redis answered the last health check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the last health check failed: writes fail at once rather than each waiting
    /// out its timeout.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Pings Redis every second until `stop`, for `/readyz`, and re-subscribes the bus after
    /// an outage so rooms catch up.
    pub async fn watch_health(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<redis::Value>(&mut conn);
            let ok = self.timed(ping).await.is_ok() && self.timed(self.bus.ping()).await.is_ok();
            let was = self.up.swap(ok, Ordering::AcqRel);
            self.down.store(!ok, Ordering::Release);
            if ok && !was {
                tracing::info!(node = %self.node, "cluster store reachable");
                // The bus re-subscribed when it reconnected: now fill what was missed.
                self.bus.mark_all_lagged();
            } else if !ok && was {
                tracing::warn!(node = %self.node, "cluster store unreachable");
                self.bus.mark_all_lagged();
            }
            crate::metrics::cluster_up(ok);
        }
    }

    /// Subscribes to a room's channel; messages go to `tx` until the subscription drops.
    pub async fn subscribe(
        &self,
        keys: &RoomKeys,
        tx: tokio::sync::mpsc::Sender<BusMsg>,
    ) -> Result<Subscription, ClusterError> {
        self.subscribe_channel(&keys.channel, tx).await
    }

    /// Routes `channel`'s messages to `tx` until the subscription drops.
    async fn subscribe_channel(
        &self,
        channel: &str,
        tx: tokio::sync::mpsc::Sender<BusMsg>,
    ) -> Result<Subscription, ClusterError> {
        let sub = self.bus.register(channel, tx);
        self.timed(self.bus.subscribe(channel)).await?;
        Ok(sub)
    }

    /// Runs one script invocation within the call timeout.
    async fn invoke(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<redis::Value, ClusterError> {
        let mut conn = self.conn.clone();
        self.timed(inv.invoke_async::<redis::Value>(&mut conn))
            .await
    }

    /// Relays an ephemeral message (typing) to the room's other nodes: published, not stored.
    pub async fn relay(&self, keys: &RoomKeys, payload: Vec<u8>) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&keys.channel).arg(payload);
        let publish = cmd.query_async::<i64>(&mut conn);
        self.timed(publish).await.map(|_| ())
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Timeout(self.op_timeout)),
        }
    }
}
