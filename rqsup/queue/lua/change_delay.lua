--[[ change_delay: set a delayed job's due time to now + delay_ms.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] delay_ms
Returns: {0, ''} | {-1, ''} not found | {-4, state} not delayed
Events: delayed {id, delay}.
]]
--@include common
local id = ARGV[1]
if not redis.call('ZSCORE', k.delayed, id) then
  local st = job_state(id)
  if st == 'missing' then return {-1, ''} end
  return {-4, st}
end
local delay = tonumber(ARGV[2])
redis.call('ZADD', k.delayed, now_ms() + delay, id)
redis.call('HSET', PREFIX .. id, 'delay', delay)
wake()
emit('event', 'delayed', 'id', id, 'delay', delay)
return {0, ''}
