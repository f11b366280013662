--[[ add: create jobs (one or a batch) in wait, prioritized or delayed.
KEYS: the standard queue keys (common.lua); uses id, meta, wait, prioritized,
      pc, delayed, marker, events, idle, job prefix; and dedup:<dedup id>
      (built from the queue base, see dedup_key).
ARGV: [1] number of jobs N, then 11 values per job:
      custom id ('' = next auto id), name, data (JSON), opts (JSON),
      delay_ms, priority, lifo (0/1), attempts,
      dedup id ('' = none), dedup mode (until_done | ttl | debounce, then
      flags: "+extend", "+replace", "+keep_last"), dedup ttl_ms (mode ttl;
      '' or 0 otherwise); then optionally the reply list of a call
      (request/response, queue.call): stored as the jobs' reply_to, and
      answered when the job ends (answer_call, common.lua)
Returns: per job {id, outcome, event id or '', timestamp or job hash}:
  outcome 1 created (then the job's timestamp: the caller has the rest of
  what was stored); 0 duplicated (the custom id existed; its hash as stored);
  2 deduplicated (id = the job holding the dedup key, nothing written); 3
  debounced (id = the kept delayed job, which now has this add's name, data,
  options and due time). Outcomes 0, 2 and 3 return the kept job's hash as
  a flat list.
Dedup, per job after the custom-id check: the key dedup:<dedup id> names the
  job that holds it. A debounce add whose kept job is still delayed and never
  started replaces it (same id); with +replace a new job replaces it (the
  kept one is deleted: BullMQ's replace). +extend: a deduplicated add resets
  the window's TTL. +keep_last: an add deduplicated against an active kept
  job is stored (dedup-next:<dedup id>, the last one wins) and created when
  the kept job ends (release_dedup, common.lua). Otherwise the add is deduplicated while the key has a
  TTL (a throttle window, whatever the kept job's state), or, for modes
  until_done and ttl, while the kept job exists and has not finished. Else a
  new job is created and takes the key (with PX ttl_ms in mode ttl). The key
  is released by release_dedup (common.lua) when the job ends or is deleted.
A ready job added while nothing else is ready goes straight to a registered
idle worker when there is one (hand-off, includes/claim.lua): state 'active'.
Events: added {id, name, state}; duplicated {id} for an existing custom id;
        deduplicated {id (the kept job), dedup_id, rejected (this add's custom
        id or ''), debounced (1 when it replaced the kept job, else 0)};
        active {id} for a job handed off.
]]
--@include common
--@include claim

-- What a dedup add does about `kept`, the job holding key dk: 'replace' it
-- in place (debounce), 'renew' it (replace: a new job takes its place),
-- 'later' (keep_last_if_active: this add runs after the active kept job),
-- 'keep' it (deduplicated), or nil: the key is free to take.
local function dedup_verdict(dk, kept, mode, flags)
  local jk = PREFIX .. kept
  local f = jmget(jk, 'name', 'finished_on', 'attempts_started')
  if not f then return nil end  -- the kept job's key is damaged: take the dedup key
  if (mode == 'debounce' or flags.replace) and redis.call('ZSCORE', k.delayed, kept)
      and (tonumber(f[3]) or 0) == 0 then
    return mode == 'debounce' and 'replace' or 'renew'
  end
  if redis.call('PTTL', dk) > 0 then return 'keep' end
  if mode ~= 'debounce' and f[1] and not f[2] then
    if flags.keep_last and redis.call('ZSCORE', k.active, kept) then return 'later' end
    return 'keep'
  end
  return nil
end

local now = now_ms()
local now_s = tostring(now)  -- formatted once (Redis 7.0 formats each number it is given)
local n = tonumber(ARGV[1])
redis.call('HSETNX', k.meta, 'version', '1')
local reply_to = ARGV[2 + n * 11]
if reply_to == '' then reply_to = nil end
local out = {}
local woken, woke_delayed = false, false
-- A batch without dedup creates a job for every add without a custom id:
-- their auto ids are drawn with one INCRBY, in add order (with dedup in
-- the batch, each is drawn when its job is created: ids stay in add order).
local autos, next_auto = 0, nil
for i = 0, n - 1 do
  local b = 2 + i * 11
  if ARGV[b + 8] ~= '' then autos = 0; break end
  local cid = ARGV[b]
  if cid == '' or string.byte(cid, 1) == 35 then autos = autos + 1 end
end
if autos > 1 then next_auto = redis.call('INCRBY', k.id, autos) - autos + 1 end
-- Ready jobs pushed to wait by this call, not yet sent: one LPUSH for a run
-- of them (flushed before any other push, so the order stays the same).
local pending = {}
local function flush_wait()
  if #pending > 0 then
    redis.call('LPUSH', k.wait, unpack(pending))
    pending = {}
  end
end
local ready_seen = false  -- a job of this call is ready: nothing to hand off
for i = 0, n - 1 do
  local b = 2 + i * 11
  local id = ARGV[b]
  local did = ARGV[b + 8]
  local outcome = 1
  local kept = nil
  local mode, flags = '', {}
  if did ~= '' then  -- the dedup mode and its flags matter only with a dedup id
    mode = string.match(ARGV[b + 9], '^([%w_]*)(.*)$')
    for flag in string.gmatch(string.sub(ARGV[b + 9], #mode + 1), '+([%w_]+)') do
      flags[flag] = true
    end
  end
  if id ~= '' and redis.call('EXISTS', PREFIX .. id) == 1 then
    outcome = 0
  elseif did ~= '' then
    kept = redis.call('GET', dedup_key(did))
    local verdict = kept and dedup_verdict(dedup_key(did), kept, mode, flags)
    if verdict == 'replace' then
      outcome = 3
    elseif verdict == 'keep' or verdict == 'later' then
      outcome = 2
      if flags.extend then
        local ttl = tonumber(ARGV[b + 10]) or 0
        -- Only a window (a key with a TTL): never put one on an until_done key.
        if ttl > 0 and redis.call('PTTL', dedup_key(did)) > 0 then
          redis.call('PEXPIRE', dedup_key(did), ttl)
        end
      end
      if verdict == 'later' then
        -- Only the last such add is kept; it is created when the kept job ends.
        redis.call('SET', P.dedup_next .. did, cjson.encode({unpack(ARGV, b, b + 10)}))
      end
    elseif verdict == 'renew' then
      -- The kept job has not started: it goes, and this add's job takes its place.
      redis.call('ZREM', k.delayed, kept)
      redis.call('DEL', dedup_key(did))
      delete_job(kept)
      emit('event', 'removed', 'id', kept, 'prev', 'delayed')
    end
  end
  local delay = tonumber(ARGV[b + 4])
  if outcome == 1 then
    local taker, priority = nil, nil
    local auto = nil
    if next_auto and (ARGV[b] == '' or string.byte(ARGV[b], 1) == 35) then
      auto, next_auto = tostring(next_auto), next_auto + 1
    end
    id, delay, priority = store_job(nil, {unpack(ARGV, b, b + 10)}, now_s, auto, reply_to)
    local state
    if delay > 0 then
      redis.call('ZADD', k.delayed, now + delay, id)
      state = 'delayed'
    else
      -- Nothing else ready (due delayed jobs count: a claim promotes them first).
      if not ready_seen and redis.call('LLEN', k.wait) == 0
          and redis.call('ZCARD', k.prioritized) == 0
          and #redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', '0', '1') == 0 then
        taker = idle_worker(now)
      end
      if taker then
        state = 'active'
      elseif priority == 0 and ARGV[b + 6] ~= '1' then
        pending[#pending + 1] = id
        state = 'wait'
      else
        flush_wait()
        state = push_ready(id, priority, ARGV[b + 6] == '1')
      end
      ready_seen = ready_seen or not taker
    end
    if state == 'delayed' and not woke_delayed then
      -- A delayed job wakes a worker too (even while paused): it recomputes
      -- how long to block.
      wake(true)
      woken, woke_delayed = true, true
    elseif not woken and state ~= 'active' then
      wake()
      woken = true
    end
    out[#out + 1] = {id, 1, emit('event', 'added', 'id', id, 'name', ARGV[b + 1], 'state', state),
      now}
    if taker then hand_off(id, taker, now) end
  elseif outcome == 0 then
    emit('event', 'duplicated', 'id', id)
    local flat = redis.pcall('HGETALL', PREFIX .. id)
    if is_err(flat) then flat = {} end
    out[#out + 1] = {id, 0, '', flat}
  else
    local jk = PREFIX .. kept
    if outcome == 3 then
      -- Not started yet: this add's job replaces it, due now + this delay.
      redis.call('HSET', jk, 'name', ARGV[b + 1], 'data', ARGV[b + 2], 'opts', ARGV[b + 3],
        'delay', delay, 'priority', ARGV[b + 5], 'attempts', ARGV[b + 7])
      redis.call('ZADD', k.delayed, now + delay, kept)
      if not woke_delayed then
        wake(true)  -- the due time may have moved earlier
        woken, woke_delayed = true, true
      end
    end
    emit('event', 'deduplicated', 'id', kept, 'dedup_id', did, 'rejected', id,
      'debounced', outcome == 3 and '1' or '0')
    local flat = redis.pcall('HGETALL', jk)
    if is_err(flat) then flat = {} end
    out[#out + 1] = {kept, outcome, '', flat}
  end
  if #pending >= 1000 then flush_wait() end  -- bounded: unpack has limits
end
flush_wait()
return out
