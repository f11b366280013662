--[[ obliterate: delete the queue, in bounded steps.
The first call pauses the queue and, unless forced, refuses while jobs are
active. Each call deletes up to N jobs; when no job is left it deletes the
queue-level keys. The caller repeats until 0, then SCANs for strays.
KEYS: the standard queue keys (common.lua).
ARGV: [1] force (0/1), [2] at most this many jobs per call
Returns: jobs deleted by this call, or -5 when jobs are active and not forced.
Events: none (the events stream is deleted too).
]]
--@include common
--@include flow
if ARGV[1] ~= '1' and redis.call('ZCARD', k.active) > 0 then return -5 end
redis.call('HSET', k.meta, 'paused', 1)
local limit = tonumber(ARGV[2])
local n = 0
for _, set in ipairs({k.active, k.delayed, k.prioritized, k.completed, k.failed,
                      k.waiting_children, k.malformed}) do
  if n >= limit then break end
  local ids = redis.call('ZRANGE', set, 0, limit - n - 1)
  for _, id in ipairs(ids) do delete_job(id) end
  if #ids > 0 then redis.call('ZREM', set, unpack(ids)) end
  n = n + #ids
end
if n < limit then
  local ids = redis.call('RPOP', k.wait, limit - n) or {}
  for _, id in ipairs(ids) do delete_job(id) end
  n = n + #ids
end
if n == 0 then
  for _, key in ipairs(QUEUE_KEYS) do redis.call('DEL', key) end
end
return n
