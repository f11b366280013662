--[[ upsert_scheduler: create or redefine a scheduler and add its first run.
KEYS: the standard queue keys (common.lua), then the schedulers zset and the
      scheduler hash prefix (last two; includes/scheduler.lua).
ARGV: [1] scheduler id, [2] spec (JSON: timing and options as given), [3] job
      name, [4] data (JSON), [5] opts (JSON, normalised), [6] priority,
      [7] lifo (0/1), [8] attempts, [9] limit (0 = none), [10] first run (ms)
      or '' for none, [11] why there is none ('end'), [12] runs to count as
      already made (BullMQ's count; '' keeps the count)
When spec, name, data and opts are unchanged nothing is written (a
supervisor upserting its config at every start keeps the pending run and
the count). Otherwise the definition is replaced, `rev` goes up, the pending
job of the older definition is removed unless it started, and the first run
is added (or the scheduler is marked done: limit reached, or no run before
its end). `count` (runs added so far) is kept.
Returns: {status (0 unchanged, 1 created, 2 updated), pending job id or '',
          done reason or ''}
Events: added {id, name, state} for the first run; removed {id, prev} for a
        replaced pending job.
]]
--@include common
--@include scheduler
local sid = ARGV[1]
local hk = sk.prefix .. sid
local old = redis.call('HMGET', hk, 'spec', 'name', 'data', 'opts', 'job', 'done', 'rev')
if old[1] == ARGV[2] and old[2] == ARGV[3] and old[3] == ARGV[4] and old[4] == ARGV[5] then
  return {0, old[5] or '', old[6] or ''}
end
local now = now_ms()
local status = 1
if old[1] then
  status = 2
  drop_pending(old[5])
end
redis.call('HSET', hk, 'spec', ARGV[2], 'name', ARGV[3], 'data', ARGV[4], 'opts', ARGV[5],
  'priority', ARGV[6], 'lifo', ARGV[7], 'attempts', ARGV[8], 'limit', ARGV[9],
  'rev', (tonumber(old[7]) or 0) + 1, 'updated', now)
redis.call('HSETNX', hk, 'created', now)
if ARGV[12] ~= '' then
  redis.call('HSET', hk, 'count', ARGV[12])
else
  redis.call('HSETNX', hk, 'count', 0)
end
local r = schedule_run(sid, hk, ARGV[10], ARGV[11], now)
return {status, r[1], r[2]}
