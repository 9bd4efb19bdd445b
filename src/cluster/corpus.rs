//! Corpus versions shared by every node: one Redis hash (tenant → version) and a channel
//! that says a version moved. Nodes keep their own copy (the caches read it on every turn)
//! and refresh it on each message and every second.

use redis::{Script, Value};

use super::{BusMsg, Cluster, ClusterError, Subscription};

/// Bumps a tenant's version and tells every node, atomically.
const BUMP: &str = r#"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PUBLISH', ARGV[2], 'V' .. ARGV[1])
return v
"#;

impl Cluster {
    fn corpus_key(&self) -> String {
        format!("{}:corpus", self.prefix)
    }

    fn corpus_channel(&self) -> String {
        format!("{}:corpus:ch", self.prefix)
    }

    /// Moves `tenant` to a new version everywhere; its new value.
    pub async fn corpus_bump(&self, tenant: &str) -> Result<u64, ClusterError> {
        let script = Script::new(BUMP);
        let mut inv = script.prepare_invoke();
        inv.key(self.corpus_key())
            .arg(tenant)
            .arg(self.corpus_channel());
        match self.invoke(&inv).await? {
            Value::Int(n) => Ok(n.max(0) as u64),
            other => Err(ClusterError::Reply(format!("corpus bump: {other:?}"))),
        }
    }

    /// Every tenant's version.
    pub async fn corpus_all(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.corpus_key());
        let all: Vec<(String, u64)> = self.timed(cmd.query_async(&mut conn)).await?;
        Ok(all)
    }

    /// Messages that a version moved (`BusMsg::Signal`), until the subscription drops.
    pub async fn corpus_subscribe(
        &self,
        tx: tokio::sync::mpsc::Sender<BusMsg>,
    ) -> Result<Subscription, ClusterError> {
        self.subscribe_channel(&self.corpus_channel(), tx).await
    }
}
