--[[ rate_limited: a processor raised RateLimited(delay) (say after an upstream
429): its job goes back to the front of wait without spending an attempt, and
the whole queue claims nothing for delay_ms (a manual limit, as limits.lua).
KEYS: the standard queue keys (common.lua).
ARGV: [1] id, [2] token, [3] delay_ms
Returns: 0 done (also for a resend of this very call), -1 job not found,
  -2 lease lost, -3 not active, -6 malformed (quarantined, common.lua).
Events: rate-limited {id, delay}.
]]
--@include common
--@include claim
--@include flow
local id, token, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held, worker, started = checked_lease(id, token, 'rate-limited', now_ms(),
  'attempts_started')
if held ~= 1 then return held end
local jk = PREFIX .. id
deactivate(id, worker)
-- This attempt does not count.
redis.call('HSET', jk, 'ended', 'rate-limited', 'attempts_started', math.max(started - 1, 0))
redis.call('HDEL', jk, 'processed_on')  -- pending again (a scheduler's run too)
push_ready(id, job_priority(id), true)
if delay > 0 then set_manual_limit(delay) end
emit('event', 'rate-limited', 'id', id, 'delay', delay)
-- Blocked workers learn the job is back; their claim says how long the
-- limit lasts, and they wait that long (no polling).
wake()
return 0
