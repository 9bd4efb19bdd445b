//! Limit accounts in Redis: one script per step, over a tenant's account and one user's
//! together (their keys share the tenant's hash tag). Slots (connections, turns) and
//! reservations are members of sorted sets scored by when their lease runs out: the node
//! holding them renews them, so a node that dies releases them within the lease.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation, Value};

use super::keys::escape;
use super::{Cluster, ClusterError};
use crate::config::LimitSet;

/// KEYS: 1 tenant account, 2 user account, 3–4 turn slots, 5–6 connection slots, 7–8 the
/// tenant's reservations (expiry, USD), 9–10 the user's. ARGV 2: now (ms), 3: lease (ms).
const PRELUDE: &str = r#"
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local acct = {KEYS[1], KEYS[2]}
local turns = {KEYS[3], KEYS[4]}
local conns = {KEYS[5], KEYS[6]}
local res = {KEYS[7], KEYS[9]}
local resv = {KEYS[8], KEYS[10]}
local day = math.floor(now / 86400000)
local function level(s, field, per_min)
  local v = redis.call('HMGET', acct[s], field, field .. '_at')
  local l = tonumber(v[1]) or per_min
  local at = tonumber(v[2]) or now
  return math.min(per_min, l + math.max(0, now - at) * per_min / 60000)
end
local function set_level(s, field, l)
  redis.call('HSET', acct[s], field, tostring(l), field .. '_at', now)
end
local function live(z)
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  return redis.call('ZCARD', z)
end
local function sweep_res(s)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', res[s], '-inf', now)) do
    redis.call('HDEL', resv[s], id)
  end
  redis.call('ZREMRANGEBYSCORE', res[s], '-inf', now)
end
local function reserved(s)
  sweep_res(s)
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', resv[s])) do sum = sum + tonumber(v) end
  return sum
end
local function spent(s)
  local v = redis.call('HMGET', acct[s], 'day', 'spent')
  if tonumber(v[1]) ~= day then return 0 end
  return tonumber(v[2]) or 0
end
local function keep()
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, 172800000) end
end
"#;

/// ARGV: 1 kind (request, connection, turn, reserve), 4 id, 5 estimated tokens, 6 estimated
/// USD, 7–11 the tenant's limits (requests/min, tokens/min, turns, connections, USD/day;
/// '' = none), 12–16 the user's. `{'ok'}`, or the refusal: limit, wait in ms (-1: never
/// fits), scope.
const TAKE: &str = r#"
local kind, id = ARGV[1], ARGV[4]
local est_t, est_u = tonumber(ARGV[5]), tonumber(ARGV[6])
local function lim(s, i)
  local v = ARGV[6 + (s - 1) * 5 + i]
  if v == '' then return nil end
  return tonumber(v)
end
local function check(s)
  if kind == 'request' then
    local rpm = lim(s, 1)
    if rpm then
      local l = level(s, 'req', rpm)
      if l < 1 then return {'requests_per_min', math.ceil((1 - l) * 60000 / rpm)} end
    end
  elseif kind == 'connection' then
    local max = lim(s, 4)
    if max and live(conns[s]) >= max then return {'ws_connections', 5000} end
  elseif kind == 'turn' then
    local max = lim(s, 3)
    if max and live(turns[s]) >= max then return {'concurrent_turns', 1000} end
  else
    local tpm = lim(s, 2)
    if tpm then
      if est_t > tpm then return {'tokens_per_min', -1} end
      local l = level(s, 'tok', tpm)
      if l < est_t then return {'tokens_per_min', math.ceil((est_t - l) * 60000 / tpm)} end
    end
    local usd = lim(s, 5)
    if usd then
      if est_u > usd then return {'usd_per_day', -1} end
      local sp, rs = spent(s), reserved(s)
      if sp + rs + est_u > usd then
        if sp + est_u <= usd and rs > 0 then return {'usd_per_day', 2000} end
        return {'usd_per_day', 86400000 - now % 86400000}
      end
    end
  end
  return nil
end
local function apply(s)
  if kind == 'request' then
    local rpm = lim(s, 1)
    if rpm then set_level(s, 'req', level(s, 'req', rpm) - 1) end
  elseif kind == 'connection' then
    live(conns[s])
    redis.call('ZADD', conns[s], now + lease, id)
  elseif kind == 'turn' then
    live(turns[s])
    redis.call('ZADD', turns[s], now + lease, id)
  else
    local tpm = lim(s, 2)
    if tpm then set_level(s, 'tok', level(s, 'tok', tpm) - est_t) end
    -- Leases of a node that died are swept here too, whether or not a limit is set.
    sweep_res(s)
    redis.call('ZADD', res[s], now + lease, id)
    redis.call('HSET', resv[s], id, ARGV[6])
  end
end
for s = 1, 2 do
  local refused = check(s)
  if refused then
    table.insert(refused, s == 1 and 'tenant' or 'user')
    return refused
  end
end
apply(1)
apply(2)
keep()
return {'ok'}
"#;

/// ARGV: 1 kind (connection, turn, settle), 4 id, 5 reserved tokens, 6 tokens used, 7 USD
/// spent, 8–9 tokens/min of tenant and user ('' = none). A settlement books the spend on
/// today (UTC) and returns or takes the tokens the estimate missed by.
const GIVE: &str = r#"
local kind, id = ARGV[1], ARGV[4]
if kind == 'connection' then
  redis.call('ZREM', conns[1], id)
  redis.call('ZREM', conns[2], id)
elseif kind == 'turn' then
  redis.call('ZREM', turns[1], id)
  redis.call('ZREM', turns[2], id)
else
  local rt, t, usd = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  for s = 1, 2 do
    redis.call('ZREM', res[s], id)
    redis.call('HDEL', resv[s], id)
    if ARGV[7 + s] ~= '' then
      local tpm = tonumber(ARGV[7 + s])
      set_level(s, 'tok', math.min(tpm, level(s, 'tok', tpm) + rt - t))
    end
    if usd > 0 then
      if tonumber(redis.call('HGET', acct[s], 'day')) ~= day then
        redis.call('HSET', acct[s], 'day', day, 'spent', '0')
      end
      redis.call('HINCRBYFLOAT', acct[s], 'spent', ARGV[7])
    end
    redis.call('HINCRBY', acct[s], 'tokens_total', t)
  end
  keep()
end
return 1
"#;

/// ARGV from 4: (kind, id) pairs this node still holds; their leases start again.
const RENEW: &str = r#"
local i = 4
while ARGV[i] do
  local kind, id = ARGV[i], ARGV[i + 1]
  local sets = res
  if kind == 'turn' then sets = turns elseif kind == 'connection' then sets = conns end
  redis.call('ZADD', sets[1], 'XX', now + lease, id)
  redis.call('ZADD', sets[2], 'XX', now + lease, id)
  i = i + 2
end
keep()
return 1
"#;

/// The tenant's settled spend today, its live reservations, tokens, turns, connections.
const USAGE: &str = r#"
local v = redis.call('HMGET', acct[1], 'day', 'spent', 'tokens_total')
local sp = 0
if tonumber(v[1]) == day then sp = tonumber(v[2]) or 0 end
return {tostring(sp), tostring(reserved(1)), tonumber(v[3]) or 0, live(turns[1]), live(conns[1])}
"#;

/// Each script compiled (hashed) once; sent by SHA, loaded again after a Redis restart.
static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{TAKE}")));
static GIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{GIVE}")));
static RENEW_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{RENEW}")));
static USAGE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PRELUDE}\n{USAGE}")));

/// The keys of one tenant's and one user's accounts.
#[derive(Debug, Clone)]
pub struct LimitKeys([String; 10]);

/// A refusal: the limit's name, the wait in ms (`None`: never fits), the scope.
pub type Refused = (String, Option<u64>, String);

/// The tenant's usage: settled USD today, reserved USD, tokens, turns, connections.
pub type LimitUsage = (f64, f64, u64, u32, u32);

fn limit_args(inv: &mut ScriptInvocation<'_>, l: &LimitSet) {
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    inv.arg(opt(l.requests_per_min.map(f64::from)))
        .arg(opt(l.tokens_per_min.map(|x| x as f64)))
        .arg(opt(l.concurrent_turns.map(f64::from)))
        .arg(opt(l.ws_connections.map(f64::from)))
        .arg(opt(l.usd_per_day));
}

impl Cluster {
    pub fn limit_keys(&self, tenant: &str, user: &str) -> LimitKeys {
        let base = format!("{}:lim:{{l.{}}}", self.prefix, escape(tenant));
        let u = format!("{base}:u:{}", escape(user));
        LimitKeys([
            format!("{base}:t"),
            u.clone(),
            format!("{base}:t:turns"),
            format!("{u}:turns"),
            format!("{base}:t:conns"),
            format!("{u}:conns"),
            format!("{base}:t:res"),
            format!("{base}:t:resv"),
            format!("{u}:res"),
            format!("{u}:resv"),
        ])
    }

    fn limit_call<'a>(
        &self,
        script: &'a Script,
        keys: &LimitKeys,
        kind: &str,
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &keys.0 {
            inv.key(k);
        }
        inv.arg(kind)
            .arg(crate::protocol::unix_ms())
            .arg(self.lease.as_millis() as u64);
        inv
    }

    /// Takes `kind` (request, connection, turn, reserve) from both accounts, or neither.
    pub async fn limit_take(
        &self,
        keys: &LimitKeys,
        kind: &str,
        id: &str,
        estimate: (u64, f64),
        limits: (&LimitSet, &LimitSet),
    ) -> Result<Option<Refused>, ClusterError> {
        let mut inv = self.limit_call(&TAKE_SCRIPT, keys, kind);
        inv.arg(id).arg(estimate.0).arg(estimate.1.to_string());
        limit_args(&mut inv, limits.0);
        limit_args(&mut inv, limits.1);
        let Value::Array(reply) = self.invoke(&inv).await? else {
            return Err(ClusterError::Reply("limit take".into()));
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let first = text(reply.first());
        if first == "ok" {
            return Ok(None);
        }
        let wait = match reply.get(1) {
            Some(Value::Int(n)) if *n >= 0 => Some(*n as u64),
            _ => None,
        };
        Ok(Some((first, wait, text(reply.get(2)))))
    }

    /// Gives back a slot, or settles a reservation with what the turn used.
    pub async fn limit_give(
        &self,
        keys: &LimitKeys,
        kind: &str,
        id: &str,
        settle: (u64, u64, f64),
        tokens_per_min: (Option<u64>, Option<u64>),
    ) -> Result<(), ClusterError> {
        let mut inv = self.limit_call(&GIVE_SCRIPT, keys, kind);
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
        inv.arg(id)
            .arg(settle.0)
            .arg(settle.1)
            .arg(settle.2.to_string())
            .arg(opt(tokens_per_min.0))
            .arg(opt(tokens_per_min.1));
        self.invoke(&inv).await.map(|_| ())
    }

    /// Starts the leases of what this node holds in these accounts again.
    pub async fn limit_renew(
        &self,
        keys: &LimitKeys,
        held: &[(&'static str, String)],
    ) -> Result<(), ClusterError> {
        let mut inv = self.limit_call(&RENEW_SCRIPT, keys, "renew");
        for (kind, id) in held {
            inv.arg(*kind).arg(id);
        }
        self.invoke(&inv).await.map(|_| ())
    }

    /// The tenant's usage, cluster-wide.
    pub async fn limit_usage(&self, keys: &LimitKeys) -> Result<LimitUsage, ClusterError> {
        let inv = self.limit_call(&USAGE_SCRIPT, keys, "usage");
        let Value::Array(v) = self.invoke(&inv).await? else {
            return Err(ClusterError::Reply("limit usage".into()));
        };
        let float = |i: usize| match v.get(i) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(0.0),
            _ => 0.0,
        };
        let int = |i: usize| match v.get(i) {
            Some(Value::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        Ok((float(0), float(1), int(2), int(3) as u32, int(4) as u32))
    }
}
