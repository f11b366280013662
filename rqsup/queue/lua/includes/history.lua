-- Per-minute history of a queue (docs/redis-schema.md, "History"): one hash
-- per minute, <base>:history:<minute> (epoch minutes), fields c (completed),
-- f (failed for good), w0..w6 and r0..r6 (wait and run time buckets: up to
-- 10 ms, 100 ms, 1 s, 10 s, 1 min, 10 min, longer). Each key expires after
-- the queue's history time (meta history_s, default 7 days; 0: off), so
-- memory is bounded without trimming. Scripts record each job in a Lua
-- table and write once per call (history_flush).
-- Included after common.
local HISTORY_S = tonumber(META[2] or '604800') or 604800  -- read by common
local HISTORY = {}
local HIST_EDGES = {10, 100, 1000, 10000, 60000, 600000}

local function hist_bucket(ms)
  for i, edge in ipairs(HIST_EDGES) do
    if ms <= edge then return i - 1 end
  end
  return #HIST_EDGES
end

local function hist_add(field, n)
  HISTORY[field] = (HISTORY[field] or 0) + n
end

-- The fields history_record needs, read by checked_lease in its own HMGET
-- (nil while history is off: nothing more is read).
local HIST_FIELDS = HISTORY_S > 0 and {'processed_on', 'timestamp', 'delay',
  'attempts_started', 'ended'} or nil

-- A job ended now: 'c' completed or 'f' failed for good. `f` is checked_lease's
-- HMGET reply (HIST_FIELDS from its 5th value). Its wait (a first attempt:
-- from ready to started) and run (started to now) go in buckets.
local function history_record(kind, f, now)
  if HISTORY_S <= 0 then return end
  hist_add(kind, 1)
  local started = f and tonumber(f[5])
  if not started then return end
  hist_add('r' .. hist_bucket(now - started), 1)
  -- The wait of a first claim that followed no other end (a move back or a
  -- rate limit rewrites delay and gives attempts_started back).
  if f[8] == '1' and not f[9] and tonumber(f[6]) then
    local ready = tonumber(f[6]) + (tonumber(f[7]) or 0)
    hist_add('w' .. hist_bucket(math.max(started - ready, 0)), 1)
  end
end

local function history_flush(now)
  if HISTORY_S <= 0 or next(HISTORY) == nil then return end
  local key = P.history .. math.floor(now / 60000)
  for field, n in pairs(HISTORY) do
    redis.call('HINCRBY', key, field, n)
  end
  redis.call('EXPIRE', key, HISTORY_S + 60, 'NX')
  HISTORY = {}
end
