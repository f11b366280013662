--[[ remove_scheduler: delete a scheduler and its pending run.
The pending job is removed unless it has started (a running or finished run
stays, like any job).
KEYS: the standard queue keys (common.lua), then the schedulers zset and the
      scheduler hash prefix (last two; includes/scheduler.lua).
ARGV: [1] scheduler id
Returns: 1 removed | 0 no such scheduler
Events: removed {id, prev} for the pending job.
]]
--@include common
--@include scheduler
local sid = ARGV[1]
local hk = sk.prefix .. sid
local job = redis.call('HGET', hk, 'job')
redis.call('ZREM', sk.zset, sid)
if not job then return redis.call('DEL', hk) end
drop_pending(job)
redis.call('DEL', hk)
return 1
