--[[ drain: remove the jobs waiting to run (wait and prioritized, and delayed
when asked). Active, finished and waiting-children jobs stay.
KEYS: the standard queue keys (common.lua).
ARGV: [1] include delayed (0/1), [2] at most this many per call
Returns: number removed (the caller repeats until fewer than the limit).
Events: drained {count} once the queue is drained.
]]
--@include common
--@include flow
local limit = tonumber(ARGV[2])
local n = 0
local function take(ids)
  for _, id in ipairs(ids) do delete_job(id) end
  n = n + #ids
end
local ids = redis.call('RPOP', k.wait, limit) or {}
take(ids)
if n < limit then
  local p = redis.call('ZPOPMIN', k.prioritized, limit - n)
  local pids = {}
  for i = 1, #p, 2 do pids[#pids + 1] = p[i] end
  take(pids)
end
if n < limit and ARGV[1] == '1' then
  local d = redis.call('ZRANGE', k.delayed, 0, limit - n - 1)
  if #d > 0 then redis.call('ZREM', k.delayed, unpack(d)) end
  take(d)
end
if n < limit then emit('event', 'drained', 'count', n) end
return n
