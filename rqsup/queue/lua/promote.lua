--[[ promote: move delayed jobs to wait now.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, or '' for every delayed job; [2] at most this many (when '')
Returns: {code, state or count}: {0, n promoted}, {-1, ''} not found,
  {-4, state} the job is not delayed, {-6, reason} the job is malformed (set
  aside: quarantine, common.lua).
Events: waiting {id, prev=delayed}.
]]
--@include common
--@include flow
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
local n, now = 0, now_ms()
for _, id in ipairs(ids) do
  redis.call('ZREM', k.delayed, id)
  local problem = key_problem(id)
  if problem then
    quarantine(id, problem, now)
    if ARGV[1] ~= '' then return {-6, problem[1]} end
  else
    redis.call('HSET', PREFIX .. id, 'delay', 0)
    push_ready(id, job_priority(id), false)
    emit('event', 'waiting', 'id', id, 'prev', 'delayed')
    n = n + 1
  end
end
if n > 0 then wake() end
return {0, n}
