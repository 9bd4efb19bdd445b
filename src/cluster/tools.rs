//! Cluster-wide slots of one tool (`max_concurrency` across every node): members of a
//! sorted set scored by when their lease runs out. A call takes a slot for at most its
//! timeout, so a node that dies mid-call frees it when the call would have timed out.

use redis::{Script, Value};

use super::keys::escape;
use super::{Cluster, ClusterError};

/// KEYS: 1 the tool's slots. ARGV: 1 now (ms), 2 lease (ms), 3 slot id, 4 limit.
const TAKE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"#;

impl Cluster {
    fn tool_key(&self, tool: &str) -> String {
        format!("{}:tool:{{{}}}:slots", self.prefix, escape(tool))
    }

    /// Takes one of `limit` slots of `tool` for `lease_ms`; false when all are taken.
    pub async fn tool_slot_take(
        &self,
        tool: &str,
        id: &str,
        limit: u32,
        lease_ms: u64,
    ) -> Result<bool, ClusterError> {
        let script = Script::new(TAKE);
        let mut inv = script.prepare_invoke();
        inv.key(self.tool_key(tool))
            .arg(crate::protocol::unix_ms())
            .arg(lease_ms)
            .arg(id)
            .arg(limit);
        match self.invoke(&inv).await? {
            Value::Int(n) => Ok(n == 1),
            other => Err(ClusterError::Reply(format!("tool slot: {other:?}"))),
        }
    }

    /// Gives a slot back.
    pub async fn tool_slot_give(&self, tool: &str, id: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.tool_key(tool)).arg(id);
        let fut = cmd.query_async::<Value>(&mut conn);
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map(|_| ()).map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Timeout(self.op_timeout)),
        }
    }
}
