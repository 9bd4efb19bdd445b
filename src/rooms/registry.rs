//! All rooms of the server, created on first join and retired soon after the last member
//! leaves (their log and history parked with the backplane for a return). A concurrent map:
//! joins to different rooms never wait for each other. Each tenant may hold at most
//! `rooms.max_rooms_per_tenant` of the server's `rooms.max_rooms`, so no tenant can take
//! the others' rooms.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::log::{Backplane, RoomMemory};
use super::room::Mode;
use super::{MemberHandle, Refusal, Resume, Room, shared};
use crate::chat::{TurnEngine, TurnRequest};
use crate::cluster::Cluster;
use crate::config::{RoomsConfig, ms};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;
use crate::protocol::Member;

/// Rooms are scoped by tenant so that two tenants' "general" rooms never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub tenant: String,
    pub name: String,
}

/// The room registry.
pub struct Rooms {
    map: DashMap<RoomKey, Arc<Room>>,
    /// Rooms held; counted apart from the map so the cap is checked without locking it all.
    count: AtomicUsize,
    /// Rooms held per tenant.
    per_tenant: DashMap<String, usize>,
    cfg: Arc<RoomsConfig>,
    backend: Backend,
    engine: Arc<TurnEngine>,
    life: Arc<Lifecycle>,
}

/// Where rooms' state lives.
pub enum Backend {
    /// In this process; empty rooms' memory is parked with the backplane.
    Local(Arc<dyn Backplane>),
    /// Cluster mode: in Redis, shared by every node; `outbox` bounds each room's writes.
    Shared {
        cluster: Arc<Cluster>,
        outbox: usize,
    },
}

impl Rooms {
    pub fn new(
        cfg: RoomsConfig,
        backend: Backend,
        engine: Arc<TurnEngine>,
        life: Arc<Lifecycle>,
    ) -> Arc<Self> {
        let rooms = Arc::new(Self {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            per_tenant: DashMap::new(),
            cfg: Arc::new(cfg),
            backend,
            engine,
            life,
        });
        tokio::spawn(janitor(Arc::downgrade(&rooms)));
        rooms
    }

    /// The room for `key`, created (with its turn worker) if needed.
    pub async fn get_or_create(&self, key: RoomKey) -> Result<Arc<Room>, ErrorCode> {
        if let Some(room) = self.map.get(&key) {
            return Ok(room.clone());
        }
        match &self.backend {
            Backend::Local(backplane) => self.create_local(key, backplane.as_ref()),
            // Boxed: this future is large, and every session's task would carry its size
            // even in local mode.
            Backend::Shared { cluster, outbox } => {
                Box::pin(self.create_shared(key, cluster, *outbox)).await
            }
        }
    }

    fn create_local(
        &self,
        key: RoomKey,
        backplane: &dyn Backplane,
    ) -> Result<Arc<Room>, ErrorCode> {
        let slot = match self.map.entry(key) {
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(slot) => slot,
        };
        let held = self.take_slot(&slot.key().tenant)?;
        let (tx, rx) = mpsc::channel(self.cfg.max_queued_turns);
        let memory = backplane.open(slot.key());
        let mode = Mode::Local(tx);
        let room = Arc::new(Room::new(
            slot.key().clone(),
            self.cfg.clone(),
            mode,
            memory,
        ));
        tokio::spawn(turn_worker(
            Arc::downgrade(&room),
            rx,
            self.engine.clone(),
            self.life.clone(),
        ));
        slot.insert(room.clone());
        crate::metrics::rooms(held);
        Ok(room)
    }

    /// Opens a room of the shared store on this node: subscribed and loaded before anyone
    /// joins it. The load is a network call, so it runs outside the map; a concurrent open
    /// of the same room that wins the insert is used instead.
    async fn create_shared(
        &self,
        key: RoomKey,
        cluster: &Arc<Cluster>,
        outbox: usize,
    ) -> Result<Arc<Room>, ErrorCode> {
        let held = self.take_slot(&key.tenant)?;
        let opened = match shared::open(cluster, &key, outbox).await {
            Ok(o) => o,
            Err(e) => {
                self.give_slot(&key.tenant);
                crate::metrics::cluster_error("open");
                tracing::warn!(error = %e, "room not opened");
                return Err(ErrorCode::from(&e));
            }
        };
        let (link, loaded, inbox) = opened.into_parts();
        let memory = RoomMemory {
            log: super::log::mirror(loaded.epoch.clone(), &self.cfg),
            history: Default::default(),
        };
        let mode = Mode::Shared(link.clone());
        let room = Arc::new(Room::new(key.clone(), self.cfg.clone(), mode, memory));
        room.reset(loaded);
        match self.map.entry(key) {
            Entry::Occupied(e) => {
                self.give_slot(&e.key().tenant);
                link.close();
                Ok(e.get().clone())
            }
            Entry::Vacant(slot) => {
                shared::start(&room, inbox, self.engine.clone(), self.life.clone());
                slot.insert(room.clone());
                crate::metrics::rooms(held);
                Ok(room)
            }
        }
    }

    /// Counts a new room against the server's and the tenant's caps; the rooms now held.
    fn take_slot(&self, tenant: &str) -> Result<usize, ErrorCode> {
        let max = self.cfg.max_rooms;
        let taken = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        let Ok(before) = taken else {
            return Err(ErrorCode::TooManyRooms);
        };
        let mut mine = self.per_tenant.entry(tenant.to_string()).or_insert(0);
        if *mine >= self.cfg.max_rooms_per_tenant {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorCode::TooManyRooms);
        }
        *mine += 1;
        Ok(before + 1)
    }

    fn give_slot(&self, tenant: &str) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut mine) = self.per_tenant.get_mut(tenant) {
            *mine = mine.saturating_sub(1);
        }
        self.per_tenant.remove_if(tenant, |_, n| *n == 0);
    }

    /// Joins `member` to the room `key` (opened if needed), retrying when the room retired
    /// between the lookup and the join.
    pub async fn join(
        &self,
        key: RoomKey,
        member: &Member,
        handle: &MemberHandle,
        resume: Option<&Resume>,
    ) -> Result<Arc<Room>, ErrorCode> {
        self.enter(key, |room| {
            room.join(member.clone(), handle.clone(), resume)
        })
        .await
    }

    /// Adds a read-only viewer to the room `key` (opened if needed).
    pub async fn watch(
        &self,
        key: RoomKey,
        handle: &MemberHandle,
        resume: Option<&Resume>,
    ) -> Result<Arc<Room>, ErrorCode> {
        self.enter(key, |room| room.watch(handle.clone(), resume))
            .await
    }

    async fn enter(
        &self,
        key: RoomKey,
        step: impl Fn(&Room) -> Result<(), Refusal>,
    ) -> Result<Arc<Room>, ErrorCode> {
        // A retired room is gone from the map, so the next lookup opens a fresh one; a few
        // tries cover a sweep racing with the join.
        for _ in 0..4 {
            let room = self.get_or_create(key.clone()).await?;
            match step(&room) {
                Ok(()) => return Ok(room),
                Err(Refusal::Retired) => continue,
                Err(Refusal::Code(code)) => return Err(code),
            }
        }
        Err(ErrorCode::Overloaded)
    }

    /// Cluster mode: waits (within `within`) until every room's queued writes — the last
    /// sessions' leaves, say — reached the shared store. Shutdown calls it last, so the
    /// other nodes do not wait out the presence lease to see this node's members go.
    pub async fn flush(&self, within: Duration) {
        let shared: Vec<_> = self
            .map
            .iter()
            .filter_map(|r| r.value().shared().cloned())
            .collect();
        let all = futures_util::future::join_all(shared.iter().map(|s| s.flushed()));
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Retires the rooms that have been empty and quiet for `rooms.empty_ttl_ms`, and parks
    /// their memory.
    fn sweep(&self) {
        let ttl = ms(self.cfg.empty_ttl_ms);
        let mut retired = Vec::new();
        self.map.retain(|key, room| match room.retire(ttl) {
            Some(memory) => {
                retired.push((key.clone(), memory));
                false
            }
            None => true,
        });
        for (key, memory) in retired {
            self.give_slot(&key.tenant);
            if let Backend::Local(backplane) = &self.backend {
                backplane.park(&key, memory);
            }
        }
        crate::metrics::rooms(self.len());
    }

    /// How often the janitor sweeps: often enough to reclaim empty rooms promptly.
    fn sweep_every(&self) -> Duration {
        ms((self.cfg.empty_ttl_ms / 2).clamp(50, 10_000))
    }
}

/// Runs the room's turns one at a time in arrival order. Holds the room weakly so an evicted
/// room (and its queue sender) can drop, which ends this task.
async fn turn_worker(
    room: Weak<Room>,
    mut rx: mpsc::Receiver<TurnRequest>,
    engine: Arc<TurnEngine>,
    life: Arc<Lifecycle>,
) {
    while let Some(turn) = rx.recv().await {
        let Some(room) = room.upgrade() else { break };
        let span = crate::chat::turn_span(&turn);
        life.turns
            .track_future(engine.run(room.as_ref(), turn, &life).instrument(span))
            .await;
    }
}

async fn janitor(rooms: Weak<Rooms>) {
    let every = match rooms.upgrade() {
        Some(r) => r.sweep_every(),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(rooms) = rooms.upgrade() else { return };
        if rooms.life.background.is_cancelled() {
            return;
        }
        rooms.sweep();
    }
}
