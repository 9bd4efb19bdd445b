//! Documents in Redis: every tenant's records, the bytes of uploads whose jobs have not
//! ended, and the ingestion jobs. They share one hash tag (`{docs}`: one slot), so one script
//! can store a record, its upload and its job together. Records are JSON changed by
//! compare-and-set: a script writes only if the record is still the one the caller read, so
//! the pipeline's logic stays in Rust and Redis guards each step.
//!
//! Jobs are one stream read by one consumer group: every node's workers take entries, a
//! worker renews its entry while it runs, and an entry idle longer than the lease (its node
//! died or froze) is taken by another node with XAUTOCLAIM, which counts the deliveries.

use std::sync::LazyLock;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script, Value};

use super::keys::escape;
use super::ops::{array, int, text, texts};
use super::{Cluster, ClusterError};

/// The consumer group every node's workers read jobs through.
const GROUP: &str = "workers";

/// KEYS: records, shas, upload, jobs, bytes held. ARGV: 1 id, 2 sha, 3 the id the sha
/// pointed at ('' = none), 4 the record read ('' = none), 5 the new record, 6 the bytes,
/// 7 tenant, 8 version, 9 job nonce, 10 most jobs queued or running, 11 the replaced
/// record's sha, 12 most bytes held. `{'ok', jobs}`, `{'retry'}` when either read is stale,
/// `{'full', jobs}` or `{'bytes', held}` when a bound would be passed.
const ACCEPT: &str = r#"
local id, sha = ARGV[1], ARGV[2]
if (redis.call('HGET', KEYS[2], sha) or '') ~= ARGV[3] then return {'retry'} end
if (redis.call('HGET', KEYS[1], id) or '') ~= ARGV[4] then return {'retry'} end
local jobs = redis.call('XLEN', KEYS[4])
local held = tonumber(redis.call('GET', KEYS[5]) or '0') - redis.call('STRLEN', KEYS[3])
if jobs >= tonumber(ARGV[10]) then return {'full', jobs} end
if held + #ARGV[6] > tonumber(ARGV[12]) then return {'bytes', held} end
if ARGV[11] ~= '' and redis.call('HGET', KEYS[2], ARGV[11]) == id then
  redis.call('HDEL', KEYS[2], ARGV[11])
end
redis.call('HSET', KEYS[1], id, ARGV[5])
redis.call('HSET', KEYS[2], sha, id)
redis.call('SET', KEYS[3], ARGV[6])
redis.call('SET', KEYS[5], held + #ARGV[6])
redis.call('XADD', KEYS[4], '*', 'tenant', ARGV[7], 'id', id, 'version', ARGV[8], 'nonce', ARGV[9])
return {'ok', jobs + 1}
"#;

/// KEYS: records. ARGV: id, the record read, the new one. 1 if written, 0 if stale.
const SWAP: &str = r#"
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// KEYS: records, shas, the record's upload, bytes held. ARGV: id, the record read, its sha.
const REMOVE: &str = r#"
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[3]) end
redis.call('DECRBY', KEYS[4], redis.call('STRLEN', KEYS[3]))
redis.call('DEL', KEYS[3])
return 1
"#;

/// KEYS: records, shas. ARGV: sha, id. The id the sha points at, that record, and the
/// record under `id`.
const PEEK: &str = r#"
local holder = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local held = ''
if holder ~= '' then held = redis.call('HGET', KEYS[1], holder) or '' end
return {holder, held, redis.call('HGET', KEYS[1], ARGV[2]) or ''}
"#;

/// KEYS: jobs. ARGV: group, consumer, least idle time (ms), then the entries this node is
/// running. Takes over one entry idle that long that this node is not running (XAUTOCLAIM
/// would take back this node's own running entries too, when a busy node renews late):
/// `{id, fields, deliveries}` or nil. An entry whose job was deleted meanwhile is skipped
/// (XCLAIM drops it from the pending list).
const RECLAIM: &str = r#"
local mine = {}
for i = 4, #ARGV do mine[ARGV[i]] = true end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 1000)
for _, p in ipairs(pending) do
  if not mine[p[1]] then
    local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
    if c[1] then return {c[1][1], c[1][2], p[4] + 1} end
  end
end
return false
"#;

/// KEYS: jobs, records. ARGV: group, consumer, entry, doc id, nonce. 'ok' (idle time reset;
/// JUSTID leaves the delivery count alone), 'lost' (another node took the entry) or 'gone'
/// (the record was deleted or replaced).
const RENEW: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if not p[1] then return 'lost' end
local rec = redis.call('HGET', KEYS[2], ARGV[4])
if not rec or not string.find(rec, ARGV[5], 1, true) then return 'gone' end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 'ok'
"#;

/// KEYS: jobs, upload, bytes held. ARGV: group, entry. The job is over: its entry and
/// bytes go.
const DONE: &str = r#"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DECRBY', KEYS[3], redis.call('STRLEN', KEYS[2]))
redis.call('DEL', KEYS[2])
return 1
"#;

/// KEYS: jobs. ARGV: group, entry, then the entry's fields. A job this node stops without
/// finishing goes back to the queue as a new entry (its delivery count starts again: a
/// shutdown is not a crash).
const REQUEUE: &str = r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return 1
"#;

/// KEYS: lock. ARGV: token.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

static ACCEPT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACCEPT));
static SWAP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SWAP));
static REMOVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE));
static PEEK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PEEK));
static RECLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECLAIM));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static DONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DONE));
static REQUEUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REQUEUE));
static UNLOCK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK));

/// One version of one document, as its job is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEntry {
    /// The stream entry's id.
    pub entry: String,
    pub tenant: String,
    pub id: String,
    pub version: u64,
    /// Matches the record's `job` while the record is still this job's.
    pub nonce: String,
    /// Times a node took this entry (1: only its first worker).
    pub deliveries: u64,
}

/// An upload to store with its record and job, in one step.
#[derive(Debug)]
pub struct NewUpload<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub sha256: &'a str,
    /// The document the sha pointed at when read ('' = none).
    pub holder: &'a str,
    /// The record under `id` when read ('' = none), and its sha.
    pub previous: &'a str,
    pub previous_sha: &'a str,
    pub record: &'a str,
    pub bytes: &'a [u8],
    pub version: u64,
    pub nonce: &'a str,
    pub max_jobs: usize,
    /// Most bytes of uploads held for unfinished jobs, cluster-wide.
    pub max_bytes: u64,
}

/// What storing an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored; this many jobs are queued or running now, cluster-wide.
    Stored(u64),
    /// What was read changed meanwhile: read again.
    Stale,
    /// This many jobs are queued or running already.
    Full(u64),
    /// Uploads waiting for their jobs hold this many bytes already.
    BytesFull(u64),
}

/// What renewing a running job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    Held,
    /// Another node took the entry (this one was too slow to renew it).
    Lost,
    /// The record was deleted or replaced.
    Gone,
}

/// What `PEEK` read: the document the sha points at and its record, and the record under
/// the id ('' = none).
pub type Peeked = (String, String, String);

impl Cluster {
    fn docs_key(&self, what: &str, tenant: &str) -> String {
        format!("{}:docs:{{docs}}:{what}:{}", self.prefix, escape(tenant))
    }

    fn upload_key(&self, tenant: &str, id: &str, version: u64) -> String {
        format!("{}:{}:v{version}", self.docs_key("u", tenant), escape(id))
    }

    fn held_key(&self) -> String {
        format!("{}:docs:{{docs}}:held", self.prefix)
    }

    fn jobs_key(&self) -> String {
        format!("{}:docs:{{docs}}:jobs", self.prefix)
    }

    fn lock_key(&self, tenant: &str, id: &str) -> String {
        format!("{}:{}", self.docs_key("lock", tenant), escape(id))
    }

    /// The record under `id` (JSON as stored).
    pub async fn doc_get(&self, tenant: &str, id: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        let key = self.docs_key("r", tenant);
        let json: Option<String> = self.timed(conn.hget(key, id)).await?;
        Ok(json)
    }

    /// Every record of the tenant (JSON as stored).
    pub async fn doc_list(&self, tenant: &str) -> Result<Vec<String>, ClusterError> {
        let mut conn = self.conn.clone();
        let key = self.docs_key("r", tenant);
        let all: Vec<String> = self.timed(conn.hvals(key)).await?;
        Ok(all)
    }

    pub async fn doc_peek(
        &self,
        tenant: &str,
        id: &str,
        sha: &str,
    ) -> Result<Peeked, ClusterError> {
        let mut inv = PEEK_SCRIPT.prepare_invoke();
        inv.key(self.docs_key("r", tenant))
            .key(self.docs_key("s", tenant))
            .arg(sha)
            .arg(id);
        let mut v = array(self.invoke(&inv).await?)?.into_iter();
        Ok((text(v.next())?, text(v.next())?, text(v.next())?))
    }

    /// Stores a new record, its upload and its job together, if what was read still holds.
    pub async fn doc_accept(&self, up: &NewUpload<'_>) -> Result<Accepted, ClusterError> {
        let mut inv = ACCEPT_SCRIPT.prepare_invoke();
        inv.key(self.docs_key("r", up.tenant))
            .key(self.docs_key("s", up.tenant))
            .key(self.upload_key(up.tenant, up.id, up.version))
            .key(self.jobs_key())
            .key(self.held_key())
            .arg(up.id)
            .arg(up.sha256)
            .arg(up.holder)
            .arg(up.previous)
            .arg(up.record)
            .arg(up.bytes)
            .arg(up.tenant)
            .arg(up.version)
            .arg(up.nonce)
            .arg(up.max_jobs)
            .arg(up.previous_sha)
            .arg(up.max_bytes);
        let mut v = array(self.invoke(&inv).await?)?.into_iter();
        match text(v.next())?.as_str() {
            "ok" => Ok(Accepted::Stored(int(v.next())?)),
            "retry" => Ok(Accepted::Stale),
            "full" => Ok(Accepted::Full(int(v.next())?)),
            "bytes" => Ok(Accepted::BytesFull(int(v.next())?)),
            other => Err(ClusterError::Reply(format!("doc accept: {other}"))),
        }
    }

    /// Replaces the record `old` (as read) with `new`; false if it changed meanwhile.
    pub async fn doc_swap(
        &self,
        tenant: &str,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, ClusterError> {
        let mut inv = SWAP_SCRIPT.prepare_invoke();
        inv.key(self.docs_key("r", tenant))
            .arg(id)
            .arg(old)
            .arg(new);
        Ok(int(Some(self.invoke(&inv).await?))? == 1)
    }

    /// Removes the record `old` (as read) and its upload; false if it changed meanwhile.
    pub async fn doc_remove(
        &self,
        tenant: &str,
        id: &str,
        old: &str,
        (sha, version): (&str, u64),
    ) -> Result<bool, ClusterError> {
        let mut inv = REMOVE_SCRIPT.prepare_invoke();
        inv.key(self.docs_key("r", tenant))
            .key(self.docs_key("s", tenant))
            .key(self.upload_key(tenant, id, version))
            .key(self.held_key())
            .arg(id)
            .arg(old)
            .arg(sha);
        Ok(int(Some(self.invoke(&inv).await?))? == 1)
    }

    /// The bytes of an upload whose job has not ended.
    pub async fn upload_get(
        &self,
        tenant: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut conn = self.conn.clone();
        let key = self.upload_key(tenant, id, version);
        let bytes: Option<Vec<u8>> = self.timed(conn.get(key)).await?;
        Ok(bytes)
    }

    /// Makes the job stream and its group if they are missing (first start, or a Redis that
    /// lost its data).
    pub async fn jobs_group(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let made: Result<(), ClusterError> = self
            .timed(conn.xgroup_create_mkstream(self.jobs_key(), GROUP, "0"))
            .await;
        match made {
            Err(ClusterError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// The next job for this node: one whose node stopped renewing it for `idle_ms` (other
    /// than the entries in `running`), else a new one, waiting up to [`super::JOB_WAIT`] for
    /// it on the blocking connection.
    pub async fn job_next(
        &self,
        idle_ms: u64,
        running: &[String],
    ) -> Result<Option<JobEntry>, ClusterError> {
        let mut inv = RECLAIM_SCRIPT.prepare_invoke();
        inv.key(self.jobs_key())
            .arg(GROUP)
            .arg(&self.node)
            .arg(idle_ms);
        for entry in running {
            inv.arg(entry);
        }
        match self.invoke(&inv).await? {
            Value::Nil => {}
            reclaimed => {
                let mut v = array(reclaimed)?.into_iter();
                let entry = text(v.next())?;
                let fields = texts(v.next())?;
                let deliveries = int(v.next())?;
                return job_entry(entry, &fields, deliveries).map(Some);
            }
        }
        let opts = StreamReadOptions::default()
            .group(GROUP, &self.node)
            .count(1)
            .block(super::JOB_WAIT.as_millis() as usize);
        let mut conn = self.blocking.clone();
        let key = [self.jobs_key()];
        let read = conn.xread_options(&key, &[">"], &opts);
        let wait = self.op_timeout + super::JOB_WAIT;
        let reply: Option<StreamReadReply> = tokio::time::timeout(wait, read)
            .await
            .map_err(|_| ClusterError::Timeout(wait))??;
        let Some(id) = reply.and_then(|r| r.keys.into_iter().next()?.ids.into_iter().next()) else {
            return Ok(None);
        };
        let mut fields = Vec::new();
        for (k, v) in id.map {
            fields.push(k);
            fields.push(text(Some(v))?);
        }
        job_entry(id.id, &fields, 1).map(Some)
    }

    /// Resets the idle time of a job this node runs, if it still holds it and its record is
    /// still the job's.
    pub async fn job_renew(&self, job: &JobEntry) -> Result<Renewed, ClusterError> {
        let mut inv = RENEW_SCRIPT.prepare_invoke();
        inv.key(self.jobs_key())
            .key(self.docs_key("r", &job.tenant))
            .arg(GROUP)
            .arg(&self.node)
            .arg(&job.entry)
            .arg(&job.id)
            .arg(&job.nonce);
        match text(Some(self.invoke(&inv).await?))?.as_str() {
            "ok" => Ok(Renewed::Held),
            "lost" => Ok(Renewed::Lost),
            _ => Ok(Renewed::Gone),
        }
    }

    /// The job ended (indexed, failed or no longer wanted): its entry and upload go.
    pub async fn job_done(&self, job: &JobEntry) -> Result<(), ClusterError> {
        let mut inv = DONE_SCRIPT.prepare_invoke();
        inv.key(self.jobs_key())
            .key(self.upload_key(&job.tenant, &job.id, job.version))
            .key(self.held_key())
            .arg(GROUP)
            .arg(&job.entry);
        self.invoke(&inv).await.map(|_| ())
    }

    /// Puts a job this node stops (shutting down) back in the queue for another node.
    pub async fn job_requeue(&self, job: &JobEntry) -> Result<(), ClusterError> {
        let mut inv = REQUEUE_SCRIPT.prepare_invoke();
        inv.key(self.jobs_key())
            .arg(GROUP)
            .arg(&job.entry)
            .arg("tenant")
            .arg(&job.tenant)
            .arg("id")
            .arg(&job.id)
            .arg("version")
            .arg(job.version)
            .arg("nonce")
            .arg(&job.nonce);
        self.invoke(&inv).await.map(|_| ())
    }

    /// Takes the document's lock for `ttl_ms` (publishes and deletes of one document, one at
    /// a time across nodes); false if another holder has it.
    pub async fn doc_lock(
        &self,
        tenant: &str,
        id: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<bool, ClusterError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lock_key(tenant, id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let set: Option<String> = self.timed(cmd.query_async(&mut conn)).await?;
        Ok(set.is_some())
    }

    pub async fn doc_unlock(
        &self,
        tenant: &str,
        id: &str,
        token: &str,
    ) -> Result<(), ClusterError> {
        let mut inv = UNLOCK_SCRIPT.prepare_invoke();
        inv.key(self.lock_key(tenant, id)).arg(token);
        self.invoke(&inv).await.map(|_| ())
    }
}

/// A job from its stream entry's fields.
fn job_entry(entry: String, fields: &[String], deliveries: u64) -> Result<JobEntry, ClusterError> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|c| c.first().map(String::as_str) == Some(name))
            .and_then(|c| c.get(1).cloned())
            .ok_or_else(|| ClusterError::Reply(format!("job {entry} has no {name}")))
    };
    Ok(JobEntry {
        tenant: field("tenant")?,
        id: field("id")?,
        version: field("version")?
            .parse()
            .map_err(|_| ClusterError::Reply(format!("job {entry}: version")))?,
        nonce: field("nonce")?,
        deliveries,
        entry,
    })
}
