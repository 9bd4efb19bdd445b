//! Redis key names. All keys of one room share a hash tag (`{…}`), so in a Redis Cluster
//! they live on one shard and a script may touch them together. The tag holds the tenant in
//! a readable, escaped form (so one tenant's keys can be found with `SCAN … MATCH`) and a
//! hash of the room name (names are free text up to 128 characters).

use sha2::{Digest, Sha256};

/// One room's keys, in the order every script expects them, and its channel.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    pub keys: [String; 8],
    pub channel: String,
}

impl RoomKeys {
    pub fn new(prefix: &str, tenant: &str, room: &str) -> Self {
        let mut h = Sha256::new();
        h.update(tenant.as_bytes());
        h.update([0]);
        h.update(room.as_bytes());
        let digest = h.finalize();
        let tag = format!("{{t.{}.{}}}", escape(tenant), hex::encode(&digest[..12]));
        let key = |suffix: &str| format!("{prefix}:room:{tag}:{suffix}");
        Self {
            keys: [
                key("meta"),
                key("log"),
                key("history"),
                key("queue"),
                key("lease"),
                key("presence"),
                key("presence_exp"),
                key("ids"),
            ],
            channel: key("ch"),
        }
    }
}

/// Letters, digits, `-` and `_` as they are; anything else as `%XX`, so that no tenant name
/// can produce another's prefix or a brace.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tenant_scoped_one_slot_and_unambiguous() {
        let a = RoomKeys::new("confab", "acme", "general");
        assert!(a.keys.iter().all(|k| k.starts_with("confab:room:{t.acme.")));
        let tag = |k: &str| k[k.find('{').unwrap_or(0)..=k.find('}').unwrap_or(0)].to_string();
        assert!(a.keys.iter().all(|k| tag(k) == tag(&a.keys[0])));
        let b = RoomKeys::new("confab", "ac.me", "general");
        let c = RoomKeys::new("confab", "a{c}", "x");
        assert_ne!(a.keys[0], b.keys[0]);
        assert_eq!(c.keys[0].matches('{').count(), 1, "{}", c.keys[0]);
        assert_ne!(
            RoomKeys::new("p", "t", "a\0b").keys[0],
            RoomKeys::new("p", "t\0a", "b").keys[0]
        );
    }
}
