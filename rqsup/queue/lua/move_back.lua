--[[ move_back: a running job goes back to delayed or wait without spending
an attempt (attempts_made stays, attempts_started goes back by one) (BullMQ's job.moveToDelayed + DelayedError, job.moveToWait +
WaitingError), fenced by its lease.
KEYS: the standard queue keys (common.lua).
ARGV: [1] id, [2] token, [3] due time (epoch ms; 0: wait now)
Returns: 0 done (also for a resend of this very call), -1 job not found,
  -2 lease lost, -3 not active, -6 malformed (quarantined, common.lua).
Events: delayed {id, delay} or waiting {id, prev=active}.
]]
--@include common
--@include claim
--@include flow
local id, token, due = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local held, worker, started = checked_lease(id, token, 'moved', now, 'attempts_started')
if held ~= 1 then return held end
local jk = PREFIX .. id
deactivate(id, worker)
-- Not an attempt: attempts_started goes back, as for rate_limited.
redis.call('HSET', jk, 'ended', 'moved', 'attempts_started', math.max(started - 1, 0))
redis.call('HDEL', jk, 'processed_on')
if due > now then
  redis.call('ZADD', k.delayed, due, id)
  redis.call('HSET', jk, 'delay', due - now)
  emit('event', 'delayed', 'id', id, 'delay', due - now)
  wake(true)
else
  push_ready(id, job_priority(id), false)
  emit('event', 'waiting', 'id', id, 'prev', 'active')
  wake()
end
return 0
