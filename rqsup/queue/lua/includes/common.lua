-- Shared helpers, inlined at the top of every script by rqsup/queue/scripts.py.
-- Every script gets the same KEYS[1]: the queue's base, from which the
-- generated `keys` include builds the queue keys and the prefixes that ids
-- are appended to (k.<suffix>, P.<prefix>; rqsup.keys lists both).
-- Return codes (rqsup.errors.Code): 0 OK, -1 job not found, -2 lease lost,
-- -3 job not active, -4 wrong state, -5 active jobs, -6 malformed job.
--
-- No script raises after its first write: what could be malformed in a job
-- (its key's type, its integer fields) is read with redis.pcall and checked
-- before anything is written, so a damaged job costs only itself. A damaged
-- job is failed with MalformedJob naming the field, or, when its key is not a
-- job hash at all, set aside in k.malformed with the reason (quarantine).
--@include keys

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The queue settings every call reads at its start, in one command (a call
-- that changes one of them reads it again itself: limits.lua, pause.lua).
local META = redis.call('HMGET', k.meta, 'max_events', 'history_s', 'concurrency')
-- As a string: Redis 7.0 formats every Lua number given to a command anew.
local MAXLEN = tostring(tonumber(META[1]) or 10000)

-- Append one event to the capped stream; returns the stream id.
local function emit(...)
  return redis.call('XADD', k.events, 'MAXLEN', '~', MAXLEN, '*', ...)
end

-- A worker's inbox (hand-off of a job at add time; see claim.lua).
local function inbox_key(worker)
  return P.wake .. worker
end

-- -- Reading jobs that may be damaged -------------------------------------------

-- A reply of redis.pcall that is an error (a key of the wrong type).
local function is_err(r)
  return type(r) == 'table' and r.err ~= nil
end

-- HGET / HMGET of a job key that may not be a hash: nil when it is not.
local function jget(jk, field)
  local r = redis.pcall('HGET', jk, field)
  if is_err(r) then return nil end
  return r
end

local function jmget(jk, ...)
  local r = redis.pcall('HMGET', jk, ...)
  if is_err(r) then return nil end
  return r
end

-- Fields the scripts add to or compare as integers (HINCRBY refuses anything else).
local INT_FIELDS = {'timestamp', 'delay', 'priority', 'attempts', 'attempts_made',
  'attempts_started', 'stalled_count', 'processed_on', 'finished_on'}

local function int_ok(v)
  return (not v) or (#v < 19 and string.match(v, '^%-?%d+$') ~= nil)
end

local function bad_int(field, v)
  return "field '" .. field .. "' is not an integer: '" .. string.sub(v, 1, 40) .. "'"
end

-- What is wrong with job `id`, or nil: {why, kind}; kind 'missing' (no key),
-- 'type' (the key is not a hash) or 'field' (a hash with a bad field: it can
-- carry the reason itself).
local function job_problem(id)
  local jk = PREFIX .. id
  local f = redis.pcall('HMGET', jk, 'name', unpack(INT_FIELDS))
  if is_err(f) then
    return {'its key holds a ' .. redis.call('TYPE', jk).ok .. ', not a job hash', 'type'}
  end
  if not f[1] then
    if redis.call('EXISTS', jk) == 0 then return {'no job hash exists for this id', 'missing'} end
    return {"field 'name' is missing", 'field'}
  end
  for i, name in ipairs(INT_FIELDS) do
    if not int_ok(f[i + 1]) then return {bad_int(name, f[i + 1]), 'field'} end
  end
  return nil
end

-- HGETALL of job `id` (flat list) and, as job_problem, what is wrong with it
-- for a claim: its key's type, its name, and the integers a claim touches
-- (attempts_started, which it adds to; processed_on, which it replaces: the
-- damage would otherwise vanish unseen). The rest of the hash the worker
-- checks when it starts the job (JobRecord.validate), and fails it as
-- MalformedJob through fail.lua.
-- One read, and plain comparisons: this is the claim's hot path.
local function read_job(id)
  local jk = PREFIX .. id
  local flat = redis.pcall('HGETALL', jk)
  if is_err(flat) then
    return nil, {'its key holds a ' .. redis.call('TYPE', jk).ok .. ', not a job hash', 'type'}
  end
  if #flat == 0 then return nil, {'no job hash exists for this id', 'missing'} end
  local named, started, processed = false, nil, nil
  for i = 1, #flat, 2 do
    local f = flat[i]
    if f == 'name' then
      named = flat[i + 1] ~= ''
    elseif f == 'attempts_started' then
      started = flat[i + 1]
    elseif f == 'processed_on' then
      processed = flat[i + 1]
    end
  end
  if not named then return flat, {"field 'name' is missing", 'field'} end
  if not int_ok(started) then return flat, {bad_int('attempts_started', started), 'field'} end
  if not int_ok(processed) then return flat, {bad_int('processed_on', processed), 'field'} end
  return flat, nil, tonumber(started) or 0
end

-- Before writing to a job key found in a list or a set: {why, kind} (as
-- job_problem) when the key is no hash at all, else nil.
local function key_problem(id)
  local t = redis.call('TYPE', PREFIX .. id).ok
  if t == 'hash' then return nil end
  if t == 'none' then return {'no job hash exists for this id', 'missing'} end
  return {'its key holds a ' .. t .. ', not a job hash', 'type'}
end

local function job_priority(id)
  return tonumber(jget(PREFIX .. id, 'priority')) or 0
end

-- Score in the prioritized zset: priority band, then FIFO (or LIFO) inside it.
-- 2^21 priorities * 2^31 per band stays below 2^53: exact in a double.
local PRIORITY_BAND = 2147483648   -- 2^31
local HALF_BAND = 1073741824       -- 2^30
local function priority_score(priority, lifo, pc)
  local c = redis.call('INCR', pc or k.pc) % HALF_BAND
  if lifo then
    return priority * PRIORITY_BAND + HALF_BAND - c
  end
  return priority * PRIORITY_BAND + HALF_BAND + c
end

-- Put a ready job where a claimer finds it; front=true: taken next. `q` is a
-- queue's keys (wait, prioritized, pc): this queue's `k`, or another queue's
-- (flows).
local function push_ready_in(q, id, priority, front)
  if priority > 0 then
    redis.call('ZADD', q.prioritized, priority_score(priority, front, q.pc), id)
    return 'prioritized'
  end
  if front then
    redis.call('RPUSH', q.wait, id)
  else
    redis.call('LPUSH', q.wait, id)
  end
  return 'wait'
end

local function push_ready(id, priority, front)
  return push_ready_in(k, id, priority, front)
end

-- Wake one blocked worker (not while paused: resume re-arms it).
-- `delayed`: a delayed job's due time was set; wake even while paused, so
-- that a blocked worker recomputes how long to block and moves the job to
-- wait when it comes due (where the pause holds it).
local function wake(delayed)
  if delayed or redis.call('HEXISTS', k.meta, 'paused') == 0 then
    redis.call('ZADD', k.marker, 0, 'w')
  end
end

-- A deduplication key (STRING: the id of the job that holds it).
local function dedup_key(dedup_id)
  return P.dedup .. dedup_id
end

-- Write a new job of queue `q` (nil: this one) from add.lua's 11 values
-- `a` (custom id, name, data, opts, delay_ms, priority, lifo, attempts,
-- dedup id, dedup mode, dedup ttl_ms): its hash and its dedup key. The
-- caller places it (delayed, ready, or handed off). Returns id, delay_ms,
-- priority, lifo (bool). A custom id '#<n>' is an auto id of partition n
-- (partitioned queues): '<next id>#<n>', unique across the partitions.
-- `auto`: an auto id drawn already (add.lua draws a batch's at once);
-- `reply_to`: a call's reply list (add.lua).
local function store_job(q, a, now, auto, reply_to)
  local dedp = q and q.dedup or P.dedup
  local id = a[1]
  if id == '' then
    id = auto or tostring(redis.call('INCR', (q or k).id))
  elseif string.byte(id, 1) == 35 then
    id = (auto or tostring(redis.call('INCR', (q or k).id))) .. id
  end
  local delay, priority = tonumber(a[5]), tonumber(a[6])
  local jk = (q and q.job or PREFIX) .. id
  -- delay and priority as sent (decimal integers from the client): no
  -- number to format again
  if reply_to then
    redis.call('HSET', jk, 'name', a[2], 'data', a[3], 'opts', a[4], 'timestamp', now,
      'delay', a[5], 'priority', a[6], 'attempts', a[8], 'attempts_made', '0',
      'reply_to', reply_to)
  else
    redis.call('HSET', jk, 'name', a[2], 'data', a[3], 'opts', a[4], 'timestamp', now,
      'delay', a[5], 'priority', a[6], 'attempts', a[8], 'attempts_made', '0')
  end
  if a[9] ~= '' then
    redis.call('HSET', jk, 'dedup_id', a[9])
    local ttl = tonumber(a[11]) or 0
    if ttl > 0 then
      redis.call('SET', dedp .. a[9], id, 'PX', ttl)
    else
      redis.call('SET', dedp .. a[9], id)
    end
  end
  return id, delay, priority, a[7] == '1'
end

-- Release the dedup key that job `id` took at add (hash field dedup_id), if
-- the key still names this job (a later job may hold it by now).
-- finished=true (the job completed or failed for good): a throttle window (a
-- key with a TTL) stays until it expires. Otherwise (the job is deleted by
-- remove, clean, drain, obliterate) the key goes whatever its mode. An add
-- kept for after this job (keep_last_if_active) is created then.
local function free_dedup(did, id, finished, q)
  local dk = (q and q.dedup or P.dedup) .. did
  if redis.call('GET', dk) ~= id then return end
  if finished and redis.call('PTTL', dk) > 0 then return end
  redis.call('DEL', dk)
  local nk = (q and q.dedup_next or P.dedup_next) .. did
  local kept = redis.call('GET', nk)
  if not kept then return end
  redis.call('DEL', nk)
  -- Only a job that ended makes way for the kept add; one deleted (remove,
  -- drain, clean, obliterate) takes it along.
  if not finished then return end
  local ok, a = pcall(cjson.decode, kept)
  if not ok or type(a) ~= 'table' or #a ~= 11 then return end
  if a[1] ~= '' and redis.call('EXISTS', (q and q.job or PREFIX) .. a[1]) == 1 then
    return  -- its custom id was taken meanwhile: that job stands (as a duplicated add)
  end
  local now = now_ms()
  local qq = q or k
  local nid, delay, priority, lifo = store_job(q, a, now)
  local state = 'delayed'
  if delay > 0 then
    redis.call('ZADD', qq.delayed, now + delay, nid)
  else
    state = push_ready_in(qq, nid, priority, lifo)
  end
  redis.call('XADD', qq.events, 'MAXLEN', '~', MAXLEN, '*', 'event', 'added', 'id', nid,
    'name', a[2], 'state', state)
  redis.call('ZADD', qq.marker, 0, 'w')
end

-- The same read gives the job's reply_to (the reply list of a call waiting
-- for it, or nil), which release_dedup returns.
-- `pre`: {dedup_id, reply_to} as the caller already read them.
local function release_dedup(id, finished, q, pre)
  local f = pre or jmget((q and q.job or PREFIX) .. id, 'dedup_id', 'reply_to')
  if not f then return nil end
  if f[1] then free_dedup(f[1], id, finished, q) end
  return f[2]
end

-- Delete a job's keys, nothing else (with a parent's flow keys: flow.lua).
-- `q` (fq): a job of another queue of the flow; nil: this queue.
local function drop_job(id, q)
  local jk = (q and q.job or PREFIX) .. id
  redis.call('DEL', jk, jk .. ':logs', jk .. ':deps', jk .. ':processed', jk .. ':ignored',
    jk .. ':failed_children')
end

-- Set by includes/flow.lua: a deleted job's parent stops waiting for it and
-- its pending children go too; a job failed for good tells its parent. nil
-- in scripts that do not include flow.
local on_delete_job = nil
local on_fail_job = nil

-- Delete a job and release its dedup key (finished: as in release_dedup).
local function delete_job(id, finished)
  if on_delete_job then on_delete_job(id) end
  release_dedup(id, finished)
  drop_job(id)
end

-- -- Active jobs -----------------------------------------------------------------

-- Take job `id` out of active (and out of its worker's set, when known).
local function deactivate(id, worker)
  redis.call('ZREM', k.active, id)
  if worker and worker ~= '' then redis.call('SREM', P.worker_jobs .. worker, id) end
end

-- Lease check for the holder of `token`: 1 the lease is held; 0 this very
-- token already ended the attempt with the same operation `op` ('completed',
-- 'failed' ...: an idempotent resend); or a negative code. `counter`: the
-- integer field the caller is about to add to (attempts_made ...), checked
-- and returned. Returns code, the job's worker, then for -6 (malformed: the
-- job is active but damaged) what is wrong ({why, kind}), else the counter,
-- then (held) the HMGET reply: `extra` fields start at its 5th value.
local function check_lease(id, token, op, counter, extra)
  local jk = PREFIX .. id
  local f
  if extra then  -- more fields in the same call (history.lua: HIST_FIELDS)
    f = redis.pcall('HMGET', jk, 'token', 'ended', 'worker', counter or 'worker', unpack(extra))
  else
    f = redis.pcall('HMGET', jk, 'token', 'ended', 'worker', counter or 'worker')
  end
  local in_active = redis.call('ZSCORE', k.active, id)
  if is_err(f) then
    return -6, nil, {'its key holds a ' .. redis.call('TYPE', jk).ok .. ', not a job hash', 'type'}
  end
  local tok = f[1]
  if tok == token then
    if in_active then
      if counter and not int_ok(f[4]) then
        return -6, f[3], {bad_int(counter, f[4]), 'field'}
      end
      return 1, f[3], counter and (tonumber(f[4]) or 0), f
    end
    if op and f[2] == op then return 0, f[3] end
    return -3, f[3]
  end
  if not tok and redis.call('EXISTS', jk) == 0 then
    if in_active then return -6, nil, {'no job hash exists for this id', 'missing'} end
    return -1
  end
  if in_active then return -2, f[3] end
  return -3, f[3]
end

-- Where a job is: O(1) except the wait list (LPOS); used on error paths and
-- by job.state().
local function job_state(id)
  if redis.call('ZSCORE', k.active, id) then return 'active' end
  if redis.call('ZSCORE', k.delayed, id) then return 'delayed' end
  if redis.call('ZSCORE', k.prioritized, id) then return 'prioritized' end
  if redis.call('ZSCORE', k.completed, id) then return 'completed' end
  if redis.call('ZSCORE', k.failed, id) then return 'failed' end
  if redis.call('ZSCORE', k.waiting_children, id) then return 'waiting-children' end
  if redis.call('ZSCORE', k.malformed, id) then return 'malformed' end
  if redis.call('LPOS', k.wait, id) then return 'wait' end
  if redis.call('EXISTS', PREFIX .. id) == 0 then return 'missing' end
  return 'unknown'
end

-- Take a job out of whatever structure holds it (not active).
local function unlink_job(id, state)
  if state == 'wait' then
    redis.call('LREM', k.wait, 0, id)
  elseif state == 'delayed' then
    redis.call('ZREM', k.delayed, id)
  elseif state == 'prioritized' then
    redis.call('ZREM', k.prioritized, id)
  elseif state == 'completed' then
    redis.call('ZREM', k.completed, id)
  elseif state == 'failed' then
    redis.call('ZREM', k.failed, id)
  elseif state == 'waiting-children' then
    redis.call('ZREM', k.waiting_children, id)
  elseif state == 'malformed' then
    redis.call('ZREM', k.malformed, id)
    redis.call('HDEL', k.malformed_why, id)
  end
end

-- Keep at most keep_count jobs (negative: no count limit), none older than
-- keep_age_ms (negative: no age limit), in a finished zset. Bounded work.
local function apply_retention(set, now, keep_count, keep_age_ms, q)
  -- Finished jobs released their dedup keys when they finished: drop_job.
  if keep_age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set, '-inf', now - keep_age_ms, 'LIMIT', 0, 1000)
    for _, oid in ipairs(old) do
      drop_job(oid, q)
      redis.call('ZREM', set, oid)
    end
  end
  if keep_count >= 0 then
    local excess = redis.call('ZCARD', set) - keep_count
    if excess > 0 then
      if excess > 1000 then excess = 1000 end
      for _, oid in ipairs(redis.call('ZRANGE', set, 0, excess - 1)) do
        drop_job(oid, q)
      end
      redis.call('ZREMRANGEBYRANK', set, 0, excess - 1)
    end
  end
end

-- How long an answer waits in a reply list for a caller that went away.
local REPLY_TTL_MS = 60000

-- Request/response (queue.call): the job's outcome goes to the caller's
-- reply list, which the caller reads with BLPOP, before retention may
-- delete the job. {id, completed (true/false), return value, error type,
-- reason, stacktrace}, as JSON.
local function answer_call(id, reply_to, completed)
  local f = redis.call('HMGET', PREFIX .. id, 'returnvalue', 'error_type', 'failed_reason',
    'stacktrace')
  redis.call('LPUSH', reply_to, cjson.encode({id, completed, f[1] or 'null', f[2] or '',
    f[3] or '', f[4] or ''}))
  redis.call('PEXPIRE', reply_to, REPLY_TTL_MS)
end

-- Move a job that left active for good into completed/failed (or delete it).
-- Releases the job's dedup key (until_done and debounce; a ttl window stays).
-- `trim_later`: the caller applies the same retention once for a batch;
-- `pre`: as release_dedup's.
local function finish_job(id, set, now, keep_count, keep_age_ms, q, trim_later, pre)
  local reply_to = release_dedup(id, true, q, pre)
  if reply_to and not q then answer_call(id, reply_to, set == k.completed) end
  if keep_count == 0 then
    drop_job(id, q)
  else
    redis.call('ZADD', set, now, id)
    if not trim_later then apply_retention(set, now, keep_count, keep_age_ms, q) end
  end
end

-- The failed-job retention of job key `jk`: its own remove_on_fail (stored
-- in opts as keep_failed) where set, else the defaults given.
local function keep_failed_of(jk, keep_count, keep_age)
  local opts = jget(jk, 'opts')
  if opts and string.find(opts, 'keep_failed', 1, true) then
    local ok, o = pcall(cjson.decode, opts)
    if ok and type(o) == 'table' and type(o.keep_failed) == 'table' then
      keep_count = tonumber(o.keep_failed.count) or keep_count
      keep_age = tonumber(o.keep_failed.age_ms) or keep_age
    end
  end
  return keep_count, keep_age
end

-- -- Damaged jobs ------------------------------------------------------------------

-- Job `id`, already taken out of every list and set, cannot be run: `problem`
-- ({why, kind}) from job_problem. A hash is failed with MalformedJob naming
-- the field; anything else is set aside in k.malformed with the reason.
-- Returns 'failed' or 'malformed'.
local function quarantine(id, problem, now)
  local why = problem[1]
  if problem[2] == 'field' then
    local jk = PREFIX .. id
    local reason = 'job ' .. id .. ' is malformed: ' .. why
    redis.call('HSET', jk, 'failed_reason', reason, 'error_type', 'MalformedJob',
      'stacktrace', '', 'finished_on', now, 'ended', 'failed')
    redis.call('HDEL', jk, 'token')
    emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', 'MalformedJob',
      'stacktrace', '', 'attempts_made', jget(jk, 'attempts_made') or '0')
    if on_fail_job then on_fail_job(id, reason, now) end
    -- Its own options may be unreadable: the default retention of failed jobs.
    finish_job(id, k.failed, now, DEFAULT_KEEP_FAILED_COUNT, DEFAULT_KEEP_FAILED_AGE_MS)
    return 'failed'
  end
  redis.call('ZADD', k.malformed, now, id)
  redis.call('HSET', k.malformed_why, id, why)
  local excess = redis.call('ZCARD', k.malformed) - MALFORMED_CAP
  if excess > 0 then
    for _, old in ipairs(redis.call('ZRANGE', k.malformed, 0, excess - 1)) do
      redis.call('HDEL', k.malformed_why, old)
    end
    redis.call('ZREMRANGEBYRANK', k.malformed, 0, excess - 1)
  end
  emit('event', 'malformed', 'id', id, 'reason', why)
  return 'malformed'
end

-- Give back active job `id` of `worker` (close, crash, restart): to the front
-- of the queue, its token void, or quarantined when damaged. True when it was
-- requeued.
-- A claim that did not end goes back to the queue (a stall, a kill, a
-- give-back): the next claim is a redelivery. `redeliver` holds the
-- attempts_started of the claim that did not end; the worker that claims
-- next (attempts_started one more) counts it (rqsup_jobs_redelivered_total),
-- and activate (claim.lua) empties it, so only that claim counts.
local function mark_redelivery(jk)
  redis.call('HSET', jk, 'redeliver', redis.call('HGET', jk, 'attempts_started') or '0')
end

-- A job whose running attempt was cancelled (cancel.lua marked it for that
-- attempt's token) fails with JobCancelled when the attempt is given back (a
-- stall, a kill, a restart) instead of running again. True when it failed it.
local function fail_if_cancelled(id, jk, now)
  local f = redis.call('HMGET', jk, 'token', 'cancel')
  local tok, c = f[1], f[2]
  if not tok or not c or string.sub(c, 1, #tok + 1) ~= tok .. ' ' then return false end
  local reason = string.sub(c, #tok + 2)
  redis.call('HSET', jk, 'failed_reason', reason, 'error_type', 'JobCancelled',
    'stacktrace', '', 'finished_on', now, 'ended', 'failed')
  redis.call('HDEL', jk, 'token')
  emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', 'JobCancelled',
    'stacktrace', '', 'attempts_made', jget(jk, 'attempts_made') or '0')
  if on_fail_job then on_fail_job(id, reason, now) end
  local keep_count, keep_age = keep_failed_of(jk, DEFAULT_KEEP_FAILED_COUNT,
    DEFAULT_KEEP_FAILED_AGE_MS)
  finish_job(id, k.failed, now, keep_count, keep_age)
  return true
end

local function give_back(id, worker, as_stall, now)
  local problem = job_problem(id)
  deactivate(id, worker)
  if problem then
    quarantine(id, problem, now)
    return false
  end
  local jk = PREFIX .. id
  if fail_if_cancelled(id, jk, now) then return false end
  redis.call('HDEL', jk, 'token')
  if as_stall then redis.call('HINCRBY', jk, 'stalled_count', 1) end
  mark_redelivery(jk)
  push_ready(id, job_priority(id), true)
  emit('event', 'requeued', 'id', id, 'worker', worker)
  return true
end

-- check_lease for the scripts that write for a lease holder (complete, fail,
-- progress, log ...): a malformed job is taken out of active and quarantined
-- here (-6), so the write that found it costs nothing else. Returns code,
-- worker, and the counter's value (see check_lease).
local function checked_lease(id, token, op, now, counter, extra)
  local held, worker, value, fields = check_lease(id, token, op, counter, extra)
  if held == -6 then
    deactivate(id, worker)
    quarantine(id, value, now)
    return held, worker
  end
  return held, worker, value, fields
end
