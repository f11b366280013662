--[[ change_priority: set a job's priority (and LIFO); a ready job moves now,
a job in any other state keeps the new priority for when it is next ready.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] priority (0 = none), [3] lifo (0/1)
Returns: {0, state} | {-1, ''} not found | {-6, reason} its key is no job hash
  (nothing written)
Events: priority {id, priority}.
]]
--@include common
local id = ARGV[1]
local st = job_state(id)
if st == 'missing' then return {-1, ''} end
local problem = key_problem(id)
if problem then return {-6, problem[1]} end
local priority = tonumber(ARGV[2])
redis.call('HSET', PREFIX .. id, 'priority', priority)
if st == 'wait' or st == 'prioritized' then
  unlink_job(id, st)
  st = push_ready(id, priority, ARGV[3] == '1')
end
emit('event', 'priority', 'id', id, 'priority', priority)
return {0, st}
