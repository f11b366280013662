--[[ gauges: a queue's numbers for a metrics scrape, read in one call.
KEYS: the standard queue keys (common.lua).
ARGV: none
Returns: {now_ms, wait, prioritized, delayed, active, completed, failed,
  waiting-children, ready time of the oldest ready job (ms; -1: none),
  paused (0/1), rate limited for (ms; 0: not limited)}
  The oldest ready job is the next to run: the pop end of wait, or the first
  of prioritized when wait is empty; its ready time is timestamp + delay.
Events: none.
]]
--@include common
local now = now_ms()
local out = {now, redis.call('LLEN', k.wait), redis.call('ZCARD', k.prioritized),
  redis.call('ZCARD', k.delayed), redis.call('ZCARD', k.active),
  redis.call('ZCARD', k.completed), redis.call('ZCARD', k.failed),
  redis.call('ZCARD', k.waiting_children)}
local oldest = -1
local id = redis.call('LINDEX', k.wait, -1)
if not id then id = redis.call('ZRANGE', k.prioritized, 0, 0)[1] end
if id then
  local f = redis.pcall('HMGET', PREFIX .. id, 'timestamp', 'delay')
  if not is_err(f) and tonumber(f[1]) then
    oldest = tonumber(f[1]) + (tonumber(f[2]) or 0)
  end
end
out[9] = oldest
out[10] = redis.call('HEXISTS', k.meta, 'paused')
local limited = math.max(redis.call('PTTL', k.limiter_manual), 0)
local m = redis.call('HGET', k.meta, 'limiter_max')
local used = redis.call('GET', k.limiter)
if m and used and tonumber(used) >= tonumber(m) then
  limited = math.max(limited, redis.call('PTTL', k.limiter))
end
out[11] = limited
return out
