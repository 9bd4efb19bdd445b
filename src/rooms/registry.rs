//! All rooms of the server, created on first join and dropped when idle. A concurrent map:
//! joins to different rooms never wait for each other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Room;
use super::log::Backplane;
use crate::chat::{TurnEngine, TurnRequest};
use crate::config::{RoomsConfig, ms};
use crate::error::ErrorCode;
use crate::lifecycle::Lifecycle;

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
    cfg: Arc<RoomsConfig>,
    backplane: Arc<dyn Backplane>,
    engine: Arc<TurnEngine>,
    life: Arc<Lifecycle>,
}

impl Rooms {
    pub fn new(
        cfg: RoomsConfig,
        backplane: Arc<dyn Backplane>,
        engine: Arc<TurnEngine>,
        life: Arc<Lifecycle>,
    ) -> Arc<Self> {
        let rooms = Arc::new(Self {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            cfg: Arc::new(cfg),
            backplane,
            engine,
            life,
        });
        tokio::spawn(janitor(Arc::downgrade(&rooms)));
        rooms
    }

    /// The room for `key`, created (with its turn worker) if needed.
    pub fn get_or_create(&self, key: RoomKey) -> Result<Arc<Room>, ErrorCode> {
        if let Some(room) = self.map.get(&key) {
            return Ok(room.clone());
        }
        let slot = match self.map.entry(key) {
            Entry::Occupied(e) => return Ok(e.get().clone()),
            Entry::Vacant(slot) => slot,
        };
        let max = self.cfg.max_rooms;
        let taken = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        let Ok(before) = taken else {
            return Err(ErrorCode::TooManyRooms);
        };
        let (tx, rx) = mpsc::channel(self.cfg.max_queued_turns);
        let log = self.backplane.open(slot.key());
        let room = Arc::new(Room::new(slot.key().clone(), self.cfg.clone(), tx, log));
        tokio::spawn(turn_worker(
            Arc::downgrade(&room),
            rx,
            self.engine.clone(),
            self.life.clone(),
        ));
        slot.insert(room.clone());
        crate::metrics::rooms(before + 1);
        Ok(room)
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self) {
        let ttl = ms(self.cfg.idle_ttl_ms);
        self.map.retain(|_, room| {
            let idle = room.is_idle(ttl);
            if idle {
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
            !idle
        });
        crate::metrics::rooms(self.len());
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
        let span = tracing::info_span!("turn", turn_id = %turn.turn_id, room = %room.key.name);
        life.turns
            .track_future(engine.run(room.as_ref(), turn, &life).instrument(span))
            .await;
    }
}

async fn janitor(rooms: Weak<Rooms>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(rooms) = rooms.upgrade() else { return };
        if rooms.life.background.is_cancelled() {
            return;
        }
        rooms.sweep();
    }
}
