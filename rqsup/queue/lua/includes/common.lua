-- Shared helpers, inlined at the top of every script by rqsup/queue/scripts.py.
-- Every script gets the same KEYS: the queue keys in rqsup.keys.QUEUE_SUFFIXES
-- order, then the job-key prefix that job ids are appended to (the only key a
-- script extends; ids are discovered at run time).
-- Return codes (rqsup.errors.Code): 0 OK, -1 job not found, -2 lease lost,
-- -3 job not active, -4 wrong state, -5 active jobs.

local k = {
  id = KEYS[1], meta = KEYS[2], wait = KEYS[3], prioritized = KEYS[4], pc = KEYS[5],
  delayed = KEYS[6], active = KEYS[7], completed = KEYS[8], failed = KEYS[9],
  waiting_children = KEYS[10], marker = KEYS[11], events = KEYS[12], fence = KEYS[13],
  stall_check = KEYS[14], idle = KEYS[15],
}
local PREFIX = KEYS[16]
-- A worker's inbox (hand-off of a job at add time; see claim.lua).
local function inbox_key(worker)
  return string.sub(k.id, 1, -3) .. 'wake:' .. worker
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local MAXLEN = tonumber(redis.call('HGET', k.meta, 'max_events')) or 10000

-- Append one event to the capped stream; returns the stream id.
local function emit(...)
  return redis.call('XADD', k.events, 'MAXLEN', '~', MAXLEN, '*', ...)
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

local function job_priority(id)
  return tonumber(redis.call('HGET', PREFIX .. id, 'priority')) or 0
end

-- Wake one blocked worker (not while paused: resume re-arms it).
local function wake()
  if redis.call('HEXISTS', k.meta, 'paused') == 0 then
    redis.call('ZADD', k.marker, 0, 'w')
  end
end

-- A deduplication key (STRING: the id of the job that holds it). The dedup
-- id arrives in ARGV, so the name is built here, as QueueKeys.dedup does.
local function dedup_key(dedup_id)
  return string.sub(k.id, 1, -3) .. 'dedup:' .. dedup_id
end

-- Release the dedup key that job `id` took at add (hash field dedup_id), if
-- the key still names this job (a later job may hold it by now).
-- finished=true (the job completed or failed for good): a throttle window (a
-- key with a TTL) stays until it expires. Otherwise (the job is deleted by
-- remove, clean, drain, obliterate) the key goes whatever its mode.
local function release_dedup(id, finished)
  local did = redis.call('HGET', PREFIX .. id, 'dedup_id')
  if not did then return end
  local dk = dedup_key(did)
  if redis.call('GET', dk) ~= id then return end
  if finished and redis.call('PTTL', dk) > 0 then return end
  redis.call('DEL', dk)
end

-- Delete a job's keys, nothing else (with a parent's flow keys: flow.lua).
local function drop_job(id)
  local jk = PREFIX .. id
  redis.call('DEL', jk, jk .. ':logs', jk .. ':deps', jk .. ':processed', jk .. ':ignored',
    jk .. ':failed_children')
end

-- Set by includes/flow.lua: a deleted job's parent stops waiting for it and
-- its pending children go too. nil in scripts that do not include flow.
local on_delete_job = nil

-- Delete a job and release its dedup key (finished: as in release_dedup).
local function delete_job(id, finished)
  if on_delete_job then on_delete_job(id) end
  release_dedup(id, finished)
  drop_job(id)
end

-- Lease check for the holder of `token`: 1 the lease is held; 0 this very
-- token already ended the attempt with the same operation `op` ('completed'
-- or 'failed': an idempotent resend); or a negative code.
local function check_lease(id, token, op)
  local jk = PREFIX .. id
  local f = redis.call('HMGET', jk, 'token', 'ended')
  local tok = f[1]
  local in_active = redis.call('ZSCORE', k.active, id)
  if tok == token then
    if in_active then return 1 end
    if op and f[2] == op then return 0 end
    return -3
  end
  if not tok and redis.call('EXISTS', jk) == 0 then return -1 end
  if in_active then return -2 end
  return -3
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
  end
end

-- Keep at most keep_count jobs (negative: no count limit), none older than
-- keep_age_ms (negative: no age limit), in a finished zset. Bounded work.
local function apply_retention(set, now, keep_count, keep_age_ms)
  -- Finished jobs released their dedup keys when they finished: drop_job.
  if keep_age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', set, '-inf', now - keep_age_ms, 'LIMIT', 0, 1000)
    for _, oid in ipairs(old) do
      drop_job(oid)
      redis.call('ZREM', set, oid)
    end
  end
  if keep_count >= 0 then
    local excess = redis.call('ZCARD', set) - keep_count
    if excess > 0 then
      if excess > 1000 then excess = 1000 end
      for _, oid in ipairs(redis.call('ZRANGE', set, 0, excess - 1)) do
        drop_job(oid)
      end
      redis.call('ZREMRANGEBYRANK', set, 0, excess - 1)
    end
  end
end

-- Move a job that left active for good into completed/failed (or delete it).
-- Releases the job's dedup key (until_done and debounce; a ttl window stays).
local function finish_job(id, set, now, keep_count, keep_age_ms)
  release_dedup(id, true)
  if keep_count == 0 then
    drop_job(id)
  else
    redis.call('ZADD', set, now, id)
    apply_retention(set, now, keep_count, keep_age_ms)
  end
end
