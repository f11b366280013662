--[[ change_delay: set a delayed job's due time to now + delay_ms.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] delay_ms
Returns: {0, ''} | {-1, ''} not found | {-4, state} not delayed |
  {-6, reason} malformed (set aside: quarantine, common.lua)
Events: delayed {id, delay}.
]]
--@include common
--@include flow
local id = ARGV[1]
if not redis.call('ZSCORE', k.delayed, id) then
  local st = job_state(id)
  if st == 'missing' then return {-1, ''} end
  return {-4, st}
end
local now = now_ms()
local problem = key_problem(id)
if problem then
  redis.call('ZREM', k.delayed, id)
  quarantine(id, problem, now)
  return {-6, problem[1]}
end
local delay = tonumber(ARGV[2])
redis.call('ZADD', k.delayed, now + delay, id)
redis.call('HSET', PREFIX .. id, 'delay', delay)
wake(true)
emit('event', 'delayed', 'id', id, 'delay', delay)
return {0, ''}
