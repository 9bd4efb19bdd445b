//! Shutdown coordination shared by sessions, rooms and turns.
//!
//! Order on shutdown: stop accepting → refuse new prompts (`draining`) → let running turns
//! finish within the grace period (`turns`) → cancel what is left (`turn_cancel`) → close
//! every session with 1012 and a reconnect hint (`sessions_close`) → wait for `sessions`.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tokens and trackers for an orderly drain.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    /// Parent of every turn's cancel token; cancelled when the grace period runs out.
    pub turn_cancel: CancellationToken,
    /// Running turns.
    pub turns: TaskTracker,
    /// Tells every session to send its close frame.
    pub sessions_close: CancellationToken,
    /// Live WebSocket sessions.
    pub sessions: TaskTracker,
    /// Stops background housekeeping and ingestion workers.
    pub background: CancellationToken,
    /// Ingestion workers: shutdown waits for them to let go of the store.
    pub workers: TaskTracker,
}

impl Lifecycle {
    /// True once shutdown started: no new prompts, `/readyz` fails.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
