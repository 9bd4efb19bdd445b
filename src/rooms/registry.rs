//! All rooms of the server, created on first join and dropped when idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::{QueuedTurn, Room};
use crate::chat::TurnEngine;
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
    map: Mutex<HashMap<RoomKey, Arc<Room>>>,
    cfg: Arc<RoomsConfig>,
    engine: Arc<TurnEngine>,
    life: Arc<Lifecycle>,
}

impl Rooms {
    pub fn new(cfg: RoomsConfig, engine: Arc<TurnEngine>, life: Arc<Lifecycle>) -> Arc<Self> {
        let rooms = Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            cfg: Arc::new(cfg),
            engine,
            life,
        });
        tokio::spawn(janitor(Arc::downgrade(&rooms)));
        rooms
    }

    /// The room for `key`, created (with its turn worker) if needed.
    pub fn get_or_create(&self, key: RoomKey) -> Result<Arc<Room>, ErrorCode> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = map.get(&key) {
            return Ok(room.clone());
        }
        if map.len() >= self.cfg.max_rooms {
            return Err(ErrorCode::TooManyRooms);
        }
        let (tx, rx) = mpsc::channel(self.cfg.max_queued_turns);
        let room = Arc::new(Room::new(key.clone(), self.cfg.clone(), tx));
        tokio::spawn(turn_worker(
            Arc::downgrade(&room),
            rx,
            self.engine.clone(),
            self.life.clone(),
        ));
        map.insert(key, room.clone());
        crate::metrics::rooms(map.len());
        Ok(room)
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self) {
        let ttl = ms(self.cfg.idle_ttl_ms);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, room| !room.is_idle(ttl));
        crate::metrics::rooms(map.len());
    }
}

/// Runs the room's turns one at a time in arrival order. Holds the room weakly so an evicted
/// room (and its queue sender) can drop, which ends this task.
async fn turn_worker(
    room: Weak<Room>,
    mut rx: mpsc::Receiver<QueuedTurn>,
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
