//! Pub/sub: one subscribed connection per node, routing each room's channel to the room's
//! bounded inbox. Redis pub/sub is at-most-once, so the bus never pretends otherwise: when
//! an inbox is full, or the connection dropped, the room is marked *lagged* and fills the
//! gap from the room's stream (see `rooms/shared.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{self, error::TrySendError};

/// One message on a room's channel.
#[derive(Debug, Clone)]
pub enum BusMsg {
    /// A logged room event, as the script published it.
    Event {
        seq: u64,
        epoch: String,
        kind: String,
        frame: Arc<str>,
    },
    /// Cancel the running turn with this id (its node acts on it).
    Cancel(String),
    /// An ephemeral event (typing) from `session`, for the members of other sessions.
    Ephemeral { session: String, frame: Arc<str> },
    /// Messages may have been missed: catch up from the stream.
    Lagged,
    /// Something moved (a tenant's corpus version): read it again.
    Signal(String),
}

struct Inbox {
    tx: mpsc::Sender<BusMsg>,
    lagged: Arc<AtomicBool>,
}

/// Channel → inbox.
#[derive(Default)]
pub struct Bus {
    inboxes: DashMap<String, Inbox>,
    conn: Mutex<Option<ConnectionManager>>,
}

/// A room's registration on the bus; dropping it unsubscribes.
pub struct Subscription {
    bus: Weak<Bus>,
    channel: String,
    /// Set when messages were dropped: the room must catch up from the stream.
    pub lagged: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        bus.inboxes.remove(&self.channel);
        if let Some(mut conn) = bus.connection() {
            let channel = self.channel.clone();
            // Fire and forget: a failed unsubscribe only costs messages nobody routes.
            tokio::spawn(async move {
                let _ = conn.unsubscribe(&channel).await;
            });
        }
    }
}

impl Bus {
    pub(super) fn attach(&self, conn: ConnectionManager) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn register(
        self: &Arc<Self>,
        channel: &str,
        tx: mpsc::Sender<BusMsg>,
    ) -> Subscription {
        let lagged = Arc::new(AtomicBool::new(false));
        self.inboxes.insert(
            channel.to_string(),
            Inbox {
                tx,
                lagged: lagged.clone(),
            },
        );
        Subscription {
            bus: Arc::downgrade(self),
            channel: channel.to_string(),
            lagged,
        }
    }

    pub(super) async fn subscribe(&self, channel: &str) -> redis::RedisResult<()> {
        match self.connection() {
            Some(mut conn) => conn.subscribe(channel).await,
            None => Err((redis::ErrorKind::Client, "bus not attached").into()),
        }
    }

    /// Pings the subscribed connection, which also makes it reconnect (and re-subscribe
    /// every channel) after an outage.
    pub(super) async fn ping(&self) -> redis::RedisResult<()> {
        match self.connection() {
            Some(mut conn) => redis::cmd("PING")
                .query_async::<Value>(&mut conn)
                .await
                .map(|_| ()),
            None => Err((redis::ErrorKind::Client, "bus not attached").into()),
        }
    }

    /// Every room must catch up (the connection dropped, or came back).
    pub(super) fn mark_all_lagged(&self) {
        for inbox in self.inboxes.iter() {
            inbox.lagged.store(true, Ordering::Release);
            let _ = inbox.tx.try_send(BusMsg::Lagged);
        }
    }

    /// Called by the connection for every push; must not block.
    pub(super) fn route(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {}
            PushKind::Disconnection => {
                tracing::debug!("pub/sub connection dropped");
                return self.mark_all_lagged();
            }
            _ => return,
        }
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (push.data.first(), push.data.get(1))
        else {
            return;
        };
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(inbox) = self.inboxes.get(channel) else {
            tracing::debug!(channel, "message for a channel nobody here follows");
            return;
        };
        let Some(msg) = parse(payload) else {
            tracing::warn!(channel, "unreadable cluster message dropped");
            return;
        };
        match inbox.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                inbox.lagged.store(true, Ordering::Release);
                crate::metrics::cluster_lagged();
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// `E<seq>:<epoch>:<kind>:<frame>`, `C<turn id>`, `T<session>:<frame>` or `V<tenant>`.
fn parse(payload: &[u8]) -> Option<BusMsg> {
    let text = std::str::from_utf8(payload).ok()?;
    let (tag, rest) = text.split_at_checked(1)?;
    match tag {
        "E" => {
            let mut parts = rest.splitn(4, ':');
            let seq = parts.next()?.parse().ok()?;
            let epoch = parts.next()?.to_string();
            let kind = parts.next()?.to_string();
            let frame = Arc::from(parts.next()?);
            Some(BusMsg::Event {
                seq,
                epoch,
                kind,
                frame,
            })
        }
        "C" => Some(BusMsg::Cancel(rest.to_string())),
        "V" => Some(BusMsg::Signal(rest.to_string())),
        "T" => {
            let (session, frame) = rest.split_once(':')?;
            Some(BusMsg::Ephemeral {
                session: session.to_string(),
                frame: Arc::from(frame),
            })
        }
        _ => None,
    }
}

/// The payload of an ephemeral message.
pub fn ephemeral(session: &str, frame: &str) -> Vec<u8> {
    format!("T{session}:{frame}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_scripts_publish() {
        let m = parse(br#"E12:00ab:delta:{"room":"r","seq":12,"x":"a:b"}"#);
        assert!(
            matches!(m, Some(BusMsg::Event { seq: 12, ref epoch, ref kind, ref frame })
            if epoch == "00ab" && kind == "delta" && frame.ends_with(r#""x":"a:b"}"#))
        );
        assert!(matches!(parse(b"Cabc"), Some(BusMsg::Cancel(ref t)) if t == "abc"));
        assert!(
            matches!(parse(b"Ts1:{}"), Some(BusMsg::Ephemeral { ref session, .. }) if session == "s1")
        );
        assert!(parse(b"Exx:1").is_none());
        assert!(parse(b"").is_none());
    }
}
