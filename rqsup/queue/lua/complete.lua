--[[ complete: token-checked active -> completed for a batch, then claim.
The same call claims up to ARGV[2] more jobs, so a busy worker spends one
round trip per batch of finished jobs.
KEYS: the standard queue keys (common.lua).
ARGV: [1] number of completions C, [2] claim N, [3] worker id, [4] lease_ms,
      then 5 values per completion: id, token, return value (JSON),
      keep_count (-1: no limit; 0: delete now), keep_age_ms (-1: no limit);
      then optionally idle_ms (as ARGV[4] of claim.lua)
Returns: {{code per completion}, claim result as in claim.lua}
  code: 0 completed (also when this token already completed it: a retried
  call is idempotent), -1 job not found, -2 lease lost, -3 not active,
  -6 malformed (the job was failed as MalformedJob, or set aside, instead).
Events: completed {id, returnvalue}; plus claim's events. Flows (flow.lua): a
        child's value goes to its parent, whose last child to finish emits
        waiting {id, prev=waiting-children} in the parent's queue.
]]
--@include common
--@include claim
--@include flow
--@include history
local now = now_ms()
local c = tonumber(ARGV[1])
local codes = {}
-- Completions that keep the same retention (the usual case: the queue's
-- default) are trimmed once for the batch, not once per job: trimming to the
-- newest N after each add or once after all leaves the same jobs.
local trim_once = c > 1
for i = 1, c - 1 do
  if ARGV[8 + i * 5] ~= ARGV[8] or ARGV[9 + i * 5] ~= ARGV[9] then trim_once = false end
end
local trimmed = false
-- Read with the lease check, in its HMGET: the fields history needs (from
-- the 5th value), then the job's parent (flows), dedup id and reply list.
local READ = {'processed_on', 'timestamp', 'delay', 'attempts_started', 'ended', 'parent',
  'dedup_id', 'reply_to'}
-- The jobs this call completes leave active (and their worker's set) in one
-- ZREM and one SREM per worker after the loop (before the claim, which
-- counts active against the concurrency cap).
local left, by_worker, done = {}, {}, {}
local now_s = tostring(now)
for i = 0, c - 1 do
  local b = 5 + i * 5
  local id, token = ARGV[b], ARGV[b + 1]
  if done[id] then
    -- The same job twice in one call: it leaves active now, so that the
    -- lease check answers as it would in a later call (the batch's ZREM and
    -- SREM then find it gone, which costs nothing).
    deactivate(id, done[id])
  end
  local held, worker, made, seen = checked_lease(id, token, 'completed', now, 'attempts_made',
    READ)
  if held == 1 then
    done[id] = worker or ''
    left[#left + 1] = id
    if worker and worker ~= '' then
      local ids = by_worker[worker] or {}
      ids[#ids + 1] = id
      by_worker[worker] = ids
    end
    redis.call('HSET', PREFIX .. id, 'returnvalue', ARGV[b + 2], 'finished_on', now_s,
      'ended', 'completed', 'attempts_made', made + 1)
    emit('event', 'completed', 'id', id, 'returnvalue', ARGV[b + 2])
    history_record('c', seen, now)
    flow_completed(id, ARGV[b + 2], seen[10])  -- a parent waiting for it (flows)
    finish_job(id, k.completed, now, tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), nil,
      trim_once, {seen[11], seen[12]})
    trimmed = trim_once
    codes[#codes + 1] = 0
  elseif held == 0 then
    codes[#codes + 1] = 0
  else
    codes[#codes + 1] = held
  end
end
for j = 1, #left, 500 do
  redis.call('ZREM', k.active, unpack(left, j, math.min(j + 499, #left)))
end
for wk, ids in pairs(by_worker) do
  for j = 1, #ids, 500 do
    redis.call('SREM', P.worker_jobs .. wk, unpack(ids, j, math.min(j + 499, #ids)))
  end
end
if trimmed and tonumber(ARGV[8]) ~= 0 then
  apply_retention(k.completed, now, tonumber(ARGV[8]), tonumber(ARGV[9]))
end
history_flush(now)
local claimed = claim_jobs(tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), now,
  tonumber(ARGV[5 + c * 5]) or 0)
if c > 0 then wake_if_capped() end
return {codes, claimed}
