--[[ scheduler_due: the schedulers a supervisor should advance now.
A scheduler is due when the run time of its pending job has passed (zset
score <= now); it is returned when that job has started (or is gone).
Writes nothing, except dropping a zset member whose hash was deleted by hand.
KEYS: the standard queue keys (common.lua), then the schedulers zset and the
      scheduler hash prefix (last two; includes/scheduler.lua).
ARGV: [1] at most this many due schedulers
Returns: {now ms, ms until the next pending run is due (-1 none), run time of
          the latest due run that has not started (-1 none),
          {id, rev, next, started ms ('' when the job is gone), spec}, ...}
Events: none.
]]
--@include common
--@include scheduler
local now = now_ms()
local out = {now, -1, -1}
local due = redis.call('ZRANGEBYSCORE', sk.zset, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, sid in ipairs(due) do
  local h = redis.call('HMGET', sk.prefix .. sid, 'rev', 'next', 'job', 'spec')
  if not h[1] then
    redis.call('ZREM', sk.zset, sid)
  else
    local started = run_started(h[3])
    if started == nil then
      local at = tonumber(h[2]) or 0
      if at > out[3] then out[3] = at end
    else
      out[#out + 1] = {sid, h[1], h[2], started, h[4]}
    end
  end
end
-- 2^53 - 1 as the upper bound leaves out done schedulers (score +inf).
local nxt = redis.call('ZRANGEBYSCORE', sk.zset, '(' .. now, '9007199254740991',
  'LIMIT', 0, 1, 'WITHSCORES')
if #nxt > 0 then out[2] = tonumber(nxt[2]) - now end
return out
