--[[ pause: pause or resume claiming for the whole queue (every worker).
Jobs keep arriving in wait while paused; nothing leaves wait or prioritized.
KEYS: the standard queue keys (common.lua); uses meta, marker, events.
ARGV: [1] 1 pause, 0 resume
Returns: 0
Events: paused {} or resumed {}.
]]
--@include common
if ARGV[1] == '1' then
  redis.call('HSET', k.meta, 'paused', 1)
  emit('event', 'paused')
else
  redis.call('HDEL', k.meta, 'paused')
  wake()
  emit('event', 'resumed')
end
return 0
