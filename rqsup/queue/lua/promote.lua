--[[ promote: move delayed jobs to wait now.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, or '' for every delayed job; [2] at most this many (when '')
Returns: {code, state or count}: {0, n promoted}, {-1, ''} not found,
  {-4, state} the job is not delayed.
Events: waiting {id, prev=delayed}.
]]
--@include common
local ids
if ARGV[1] ~= '' then
  local id = ARGV[1]
  if not redis.call('ZSCORE', k.delayed, id) then
    local st = job_state(id)
    if st == 'missing' then return {-1, ''} end
    return {-4, st}
  end
  ids = {id}
else
  ids = redis.call('ZRANGE', k.delayed, 0, tonumber(ARGV[2]) - 1)
end
for _, id in ipairs(ids) do
  redis.call('ZREM', k.delayed, id)
  redis.call('HSET', PREFIX .. id, 'delay', 0)
  push_ready(id, job_priority(id), false)
  emit('event', 'waiting', 'id', id, 'prev', 'delayed')
end
if #ids > 0 then wake() end
return {0, #ids}
