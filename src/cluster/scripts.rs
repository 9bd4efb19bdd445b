//! The Lua scripts behind every change to a room's shared state. One script per change, so
//! each is atomic on the server: a seq is taken, the event stored and published in one step,
//! and two nodes can never interleave inside it (Centrifugo's broker does the same).
//!
//! Every script gets the same keys and leading arguments, so one prelude serves them all:
//! KEYS: meta, log, history, queue, lease, presence, presence expiries, prompt ids;
//! ARGV: channel, epoch to use if the room has none, log length, key TTL (ms), history turns.

use redis::Script;

/// Helpers shared by the scripts. `epoch()` reads the room's epoch, starting a new one (and
/// dropping what is left of the old log and history) when the meta hash is gone: a room
/// that expired or a Redis that lost its data. `append` takes the next seq, splices it into
/// the event's bytes, stores the event in the stream (id = seq) and publishes it.
const PRELUDE: &str = r#"
local meta, log, hist, queue, lease, pres, pexp, ids =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local channel, maxlen, ttl = ARGV[1], ARGV[3], ARGV[4]
local function epoch()
  local e = redis.call('HGET', meta, 'epoch')
  if e then return e end
  redis.call('DEL', log, hist)
  redis.call('HSET', meta, 'epoch', ARGV[2], 'seq', 0, 'hist_seq', 0)
  return ARGV[2]
end
local function touch()
  for _, k in ipairs({meta, log, hist, queue, ids, pres, pexp}) do
    redis.call('PEXPIRE', k, ttl)
  end
end
local function append(e, kind, head, tail)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local frame = head .. '"seq":' .. seq .. ',' .. tail
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-1', 'k', kind, 'd', frame)
  redis.call('PUBLISH', channel, 'E' .. seq .. ':' .. e .. ':' .. kind .. ':' .. frame)
  return seq
end
local function sweep_presence(now)
  local gone = redis.call('ZRANGEBYSCORE', pexp, '-inf', now)
  for _, sid in ipairs(gone) do
    redis.call('HDEL', pres, sid)
    redis.call('ZREM', pexp, sid)
  end
  return #gone > 0
end
"#;

/// Appends events. ARGV[6] = count, then per event: kind, head, tail, turn id, history
/// entry. A turn's events are taken only while that turn is the room's running one, so a
/// node that lost its lease cannot write into a turn another node has ended. An `end` with a
/// history entry adds it to the history; an `end` of the running turn clears it.
const EMIT: &str = r#"
local e = epoch()
local out = {e}
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  local kind, head, tail, tid, entry =
    ARGV[7 + i * 5], ARGV[8 + i * 5], ARGV[9 + i * 5], ARGV[10 + i * 5], ARGV[11 + i * 5]
  local run_id = redis.call('HGET', meta, 'run_id')
  if tid ~= '' and run_id ~= tid then
    table.insert(out, 0)
  else
    local seq = append(e, kind, head, tail)
    if kind == 'start' then redis.call('HSET', meta, 'run_start', seq) end
    if kind == 'end' then
      if entry ~= '' then
        redis.call('RPUSH', hist, entry)
        redis.call('LTRIM', hist, -tonumber(ARGV[5]), -1)
        redis.call('HSET', meta, 'hist_seq', seq)
      end
      if run_id == tid then redis.call('HDEL', meta, 'run', 'run_id', 'run_node', 'run_start') end
    end
    table.insert(out, seq)
  end
end
touch()
return out
"#;

/// Queues a prompt. ARGV: 6 client_msg_id ('' for none), 7 queue limit, 8–9 the `message`
/// event, 10 turn id, 11 the turn as JSON. The queue entry is "turn_id message_seq json".
const SUBMIT: &str = r#"
local e = epoch()
if ARGV[6] ~= '' and redis.call('ZSCORE', ids, ARGV[6]) then return {'duplicate'} end
if redis.call('LLEN', queue) >= tonumber(ARGV[7]) then return {'busy'} end
local seq = append(e, 'message', ARGV[8], ARGV[9])
redis.call('RPUSH', queue, ARGV[10] .. ' ' .. seq .. ' ' .. ARGV[11])
if ARGV[6] ~= '' then
  redis.call('ZADD', ids, seq, ARGV[6])
  redis.call('ZREMRANGEBYRANK', ids, 0, -513)
end
touch()
return {'ok', seq}
"#;

/// Takes the room's turn lease and what to do with it. ARGV: 6 node, 7 lease (ms).
/// `held`: another node runs the room. `orphan`: a turn was left running by a node that
/// stopped (or whose end was lost); the caller ends it. `run`: the next queued turn, now the
/// running one. `idle`: nothing queued; the lease is given back.
const CLAIM: &str = r#"
local holder = redis.call('GET', lease)
if holder and holder ~= ARGV[6] then return {'held', holder} end
local run = redis.call('HGET', meta, 'run')
if run then
  redis.call('SET', lease, ARGV[6], 'PX', ARGV[7])
  return {'orphan', run, redis.call('HGET', meta, 'run_node') or ''}
end
local item = redis.call('LPOP', queue)
if not item then
  if holder then redis.call('DEL', lease) end
  return {'idle'}
end
epoch()
redis.call('SET', lease, ARGV[6], 'PX', ARGV[7])
local sp = string.find(item, ' ', 1, true) or 1
redis.call('HSET', meta, 'run', item, 'run_id', string.sub(item, 1, sp - 1), 'run_node', ARGV[6])
return {'run', item}
"#;

/// Keeps the lease while this node holds it. ARGV: 6 node, 7 lease (ms). 1: renewed.
const RENEW: &str = r#"
if redis.call('GET', lease) == ARGV[6] then
  redis.call('PEXPIRE', lease, ARGV[7])
  return 1
end
return 0
"#;

/// Cancels a turn. ARGV: 6 turn id, 7–8 its `end` event. A queued turn leaves the queue and
/// ends here; the running one is told to the node that runs it.
const CANCEL: &str = r#"
local prefix = ARGV[6] .. ' '
for _, item in ipairs(redis.call('LRANGE', queue, 0, -1)) do
  if string.sub(item, 1, #prefix) == prefix then
    redis.call('LREM', queue, 1, item)
    append(epoch(), 'end', ARGV[7], ARGV[8])
    touch()
    return 'queued'
  end
end
if redis.call('HGET', meta, 'run_id') == ARGV[6] then
  redis.call('PUBLISH', channel, 'C' .. ARGV[6])
  return 'running'
end
return 'unknown'
"#;

/// One node's members of a room. ARGV: 6 now (ms), 7 member TTL (ms), 8–9 the `presence`
/// event's head and tail up to its members array, 10 '1' to announce even if unchanged,
/// 11 count of sessions that left, then their ids, then the count of this node's members,
/// then (session id, member JSON) pairs. Members of a node that stops renewing expire, and
/// whoever calls next announces the new roster. Returns the seq of the announcement, or 0.
const PRESENCE: &str = r#"
local changed = sweep_presence(ARGV[6]) or ARGV[10] == '1'
local i = 11
local nl = tonumber(ARGV[i]); i = i + 1
for _ = 1, nl do
  if redis.call('HDEL', pres, ARGV[i]) == 1 then changed = true end
  redis.call('ZREM', pexp, ARGV[i])
  i = i + 1
end
local nj = tonumber(ARGV[i]); i = i + 1
local until_ms = tonumber(ARGV[6]) + tonumber(ARGV[7])
for _ = 1, nj do
  if redis.call('HSET', pres, ARGV[i], ARGV[i + 1]) == 1 then changed = true end
  redis.call('ZADD', pexp, until_ms, ARGV[i])
  i = i + 2
end
if not changed then
  redis.call('PEXPIRE', pres, ttl)
  redis.call('PEXPIRE', pexp, ttl)
  return 0
end
local members = redis.call('HVALS', pres)
local seq = append(epoch(), 'presence', ARGV[8], ARGV[9] .. '[' .. table.concat(members, ',') .. ']}')
touch()
return seq
"#;

/// Everything a node needs to open a room: epoch, head seq, the seq up to which the history
/// is recorded, the running turn, the log's newest events (at most `rooms.replay_events`
/// and about `rooms.replay_bytes`, what the node's mirror keeps), the history and the
/// roster. ARGV: 6 now, 7 byte budget. The log is walked newest first in batches, so a room
/// full of large events costs its budget, not its length.
const LOAD: &str = r#"
local e = epoch()
sweep_presence(ARGV[6])
touch()
local m = redis.call('HMGET', meta, 'seq', 'hist_seq', 'run')
local tail, bytes, top, full = {}, 0, '+', false
local budget, most = tonumber(ARGV[7]), tonumber(maxlen)
while not full do
  local batch = redis.call('XREVRANGE', log, top, '-', 'COUNT', 128)
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    local size = 0
    for _, v in ipairs(entry[2]) do size = size + #v end
    if #tail >= most or (#tail > 0 and bytes + size > budget) then
      full = true
      break
    end
    bytes = bytes + size
    tail[#tail + 1] = entry
  end
  top = '(' .. batch[#batch][1]
end
local frames = {}
for i = #tail, 1, -1 do frames[#frames + 1] = tail[i] end
return {e, m[1] or '0', m[2] or '0', m[3] or '', frames,
  redis.call('LRANGE', hist, 0, -1), redis.call('HVALS', pres)}
"#;

/// The log after a seq, for a node that missed publishes. ARGV: 6 first stream id wanted,
/// 7 most events to return (the caller asks again for the rest). An empty epoch: the
/// room's state is gone (the caller reopens it).
const RANGE: &str = r#"
local e = redis.call('HGET', meta, 'epoch')
if not e then return {''} end
return {e, redis.call('HGET', meta, 'seq') or '0',
  redis.call('XRANGE', log, ARGV[6], '+', 'COUNT', ARGV[7])}
"#;

/// The compiled scripts (each sent by SHA, loaded again after a Redis restart).
pub struct Scripts {
    pub emit: Script,
    pub submit: Script,
    pub claim: Script,
    pub renew: Script,
    pub cancel: Script,
    pub presence: Script,
    pub load: Script,
    pub range: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            emit: with(EMIT),
            submit: with(SUBMIT),
            claim: with(CLAIM),
            renew: with(RENEW),
            cancel: with(CANCEL),
            presence: with(PRESENCE),
            load: with(LOAD),
            range: with(RANGE),
        }
    }
}
