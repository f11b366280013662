-- Claiming, shared by claim.lua and complete.lua.

-- Move due delayed jobs to wait/prioritized (at most 1000 per call).
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', k.delayed, id)
    push_ready(id, job_priority(id), false)
    emit('event', 'waiting', 'id', id, 'prev', 'delayed')
  end
end

-- Queue-wide limits (meta: limiter_max + limiter_duration_ms, concurrency).
-- The limiter key counts claims in the current window (PX = the window).
local LIMITER = k.limiter
-- A manual limit lives in a key of its own, so an open counting window can
-- neither hide nor shorten it.
local MANUAL_LIMIT = k.limiter_manual

-- Stop claims for delay_ms (never shortens a longer manual limit).
local function set_manual_limit(delay_ms)
  if redis.call('PTTL', MANUAL_LIMIT) < delay_ms then
    redis.call('SET', MANUAL_LIMIT, '1', 'PX', delay_ms)
  end
end

-- How many of n jobs may be claimed now, and if none, how long until the
-- limit may lift (ms; -1: not rate limited, e.g. paused or at concurrency).
local function claim_budget(n)
  if n <= 0 then return 0, -1 end
  -- One read of the settings: paused (the field exists), the cap, the rate.
  local m = redis.call('HMGET', k.meta, 'paused', 'concurrency', 'limiter_max')
  if m[1] then return 0, -1 end
  local cap = tonumber(m[2])
  if cap then
    local free = cap - redis.call('ZCARD', k.active)
    if free < n then n = free end
  end
  local manual = redis.call('PTTL', MANUAL_LIMIT)
  if manual > 0 then return 0, manual end
  local used = redis.call('GET', LIMITER)
  local lmax = tonumber(m[3])
  if used then
    local ttl = redis.call('PTTL', LIMITER)
    if ttl <= 0 then
      -- Expiring this very millisecond (or, stale, without expiry): the
      -- window is over; a claim now opens the next one.
      redis.call('DEL', LIMITER)
      used = nil
    elseif lmax and tonumber(used) >= lmax then
      return 0, ttl
    end
  end
  if lmax then
    local left = lmax - (tonumber(used) or 0)
    if left < n then n = left end
  end
  if n < 0 then n = 0 end
  return n, -1
end

-- Count `taken` claims against the rate limit (opens a window when none is).
local function spend_budget(taken)
  if taken <= 0 then return end
  local m = redis.call('HMGET', k.meta, 'limiter_max', 'limiter_duration_ms')
  if not tonumber(m[1]) then return end
  if redis.call('INCRBY', LIMITER, taken) == taken then
    redis.call('PEXPIRE', LIMITER, tonumber(m[2]) or 1000)
  end
end

-- A job left active (complete, fail): under a concurrency cap, wake a worker
-- that may be waiting for a slot while work is ready. (The cap as read at the
-- call's start: none of its callers changes it.)
local function wake_if_capped()
  if META[3]
      and (redis.call('LLEN', k.wait) > 0 or redis.call('ZCARD', k.prioritized) > 0) then
    wake()
  end
end

-- The hash as read, with what activate changed appended (a later field wins
-- when the reply is read into a dict).
local function with_fields(flat, extra)
  for _, v in ipairs(extra) do flat[#flat + 1] = v end
  return flat
end

-- The job's own part of activating it (activate, claim_jobs); now_s: the
-- time as a string (Redis 7.0 formats every Lua number it is given anew).
local function mark_active(id, worker, token, now_s, started)
  started = tostring(started + 1)
  -- redeliver: emptied in the same call, so only the first claim after a
  -- give-back counts as a redelivery (the hash as read still shows it).
  redis.call('HSET', PREFIX .. id, 'token', token, 'worker', worker, 'processed_on', now_s,
    'attempts_started', started, 'redeliver', '')
  emit('event', 'active', 'id', id)
  return {'token', token, 'worker', worker, 'processed_on', now_s, 'attempts_started', started}
end

-- Make one (checked) job active for `worker`; `started`: its attempts so far.
-- Returns its token and the fields this changed, to append to the hash the
-- caller read before.
local function activate(id, worker, deadline, now, started)
  local token = tostring(redis.call('INCR', k.fence))
  redis.call('ZADD', k.active, deadline, id)
  redis.call('SADD', P.worker_jobs .. worker, id)
  return token, mark_active(id, worker, token, tostring(now), started)
end

-- activate for a batch: tokens from one INCRBY (still unique and rising),
-- one ZADD and one SADD for up to CLAIM_CHUNK jobs ({id, flat, started}).
local CLAIM_CHUNK = 500
local function activate_all(good, worker, deadline, now, out)
  local now_s, deadline_s = tostring(now), tostring(deadline)
  for c = 1, #good, CLAIM_CHUNK do
    local last = math.min(c + CLAIM_CHUNK - 1, #good)
    local top = redis.call('INCRBY', k.fence, last - c + 1)
    local scored, ids = {}, {}
    for i = c, last do
      local g = good[i]
      local token = tostring(top - last + i)
      scored[#scored + 1] = deadline_s
      scored[#scored + 1] = g[1]
      ids[#ids + 1] = g[1]
      out[#out + 1] = {g[1], token, with_fields(g[2], mark_active(g[1], worker, token, now_s,
        g[3]))}
    end
    redis.call('ZADD', k.active, unpack(scored))
    redis.call('SADD', P.worker_jobs .. worker, unpack(ids))
  end
end

-- Hand-off: a worker whose claim came back short registers in k.idle (member
-- "<lease_ms>|<worker>", score = expiry) while it blocks on its inbox and the
-- marker. An add then claims a job for it directly and puts {id, token, hash}
-- in its inbox (BZPOPMIN wakes it with the job: no claim round trip).
local function register_idle(worker, lease_ms, idle_ms, asked, got, now)
  if idle_ms <= 0 or asked <= 0 then return end
  local member = lease_ms .. '|' .. worker
  if got < asked then
    redis.call('ZADD', k.idle, now + idle_ms, member)
  else
    redis.call('ZREM', k.idle, member)
  end
end

-- At add: a registered idle worker that is alive (its member), or nil.
local function idle_worker(now)
  redis.call('ZREMRANGEBYSCORE', k.idle, '-inf', now)
  local w = redis.call('ZRANGE', k.idle, 0, 0)
  if #w == 0 then return nil end
  local allowed = claim_budget(1)  -- pause, rate limit and concurrency cap hold here too
  if allowed < 1 then return nil end
  spend_budget(1)
  redis.call('ZREM', k.idle, w[1])
  return w[1]
end

-- Claim job `id` (just added, so well formed) for the idle worker `member`
-- and put it in the worker's inbox.
local function hand_off(id, member, now)
  local sep = string.find(member, '|', 1, true)
  local lease_ms = tonumber(string.sub(member, 1, sep - 1))
  local worker = string.sub(member, sep + 1)
  local token = activate(id, worker, now + lease_ms, now, 0)
  redis.call('SADD', k.workers, worker)
  local inbox = inbox_key(worker)
  redis.call('ZADD', inbox, now, cjson.encode({id, token, redis.call('HGETALL', PREFIX .. id)}))
  redis.call('PEXPIRE', inbox, lease_ms)
end

-- Jobs handed to `worker` that it has not popped yet (at most n); each still
-- checked to be active under it with that token (and still well formed).
local function take_inbox(worker, n, out, now)
  if n <= 0 then return 0 end
  local got = 0
  local items = redis.call('ZPOPMIN', inbox_key(worker), n)
  for i = 1, #items, 2 do
    if string.sub(items[i], 1, 1) == '[' then
      local item = cjson.decode(items[i])
      local f = jmget(PREFIX .. item[1], 'token', 'worker')
      if f and f[1] == item[2] and f[2] == worker then
        local flat, problem = read_job(item[1])  -- activated already: only checked
        if problem then
          deactivate(item[1], worker)
          quarantine(item[1], problem, now)
        else
          out[#out + 1] = {item[1], item[2], flat}
          got = got + 1
        end
      end
    end
  end
  return got
end

-- Claim up to n ready jobs for `worker` with a lease of lease_ms. Every id
-- popped is checked before any is activated, and a damaged one is
-- quarantined (common.lua): it never costs the other jobs of the claim.
-- Returns {next_delayed_in_ms or -1, {id, token, hgetall}, ...}.
local function claim_jobs(n, worker, lease_ms, now, idle_ms)
  local out = {-1}
  promote_due(now)
  local asked = n
  n = n - take_inbox(worker, n, out, now)
  local wanted, limited_ms = n, -1
  n, limited_ms = claim_budget(n)
  if n > 0 then
    local ids = redis.call('RPOP', k.wait, n) or {}
    if #ids < n then
      local p = redis.call('ZPOPMIN', k.prioritized, n - #ids)
      for i = 1, #p, 2 do ids[#ids + 1] = p[i] end
    end
    local good = {}
    for _, id in ipairs(ids) do
      local flat, problem, started = read_job(id)
      if problem then
        quarantine(id, problem, now)
      else
        good[#good + 1] = {id, flat, started}
      end
    end
    if #good > 0 then
      activate_all(good, worker, now + lease_ms, now, out)
      redis.call('SADD', k.workers, worker)
    end
    spend_budget(#good)
    if n < wanted and limited_ms < 0 then
      local _left, wait = claim_budget(1)  -- did we just use up the window?
      limited_ms = wait
    end
    -- More ready work than we took (and no limit held us back): wake another
    -- blocked worker.
    if #ids == n and n == wanted
        and (redis.call('LLEN', k.wait) > 0 or redis.call('ZCARD', k.prioritized) > 0) then
      redis.call('ZADD', k.marker, 0, 'w')
    end
  end
  register_idle(worker, lease_ms, idle_ms, asked, #out - 1, now)
  local nxt = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    local delta = tonumber(nxt[2]) - now
    if delta < 0 then delta = 0 end
    out[1] = delta
  end
  -- Rate limited: the caller retries when the window ends (not before).
  if limited_ms > 0 and (out[1] < 0 or limited_ms < out[1]) then out[1] = limited_ms end
  return out
end
