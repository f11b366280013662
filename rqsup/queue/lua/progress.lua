--[[ progress: record a running job's progress (number or JSON), fenced.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] token, [3] progress (JSON)
Returns: 0, or -1/-2/-3/-6 when the caller does not hold the lease (-6: the
  job is malformed and was quarantined).
Events: progress {id, progress}.
]]
--@include common
--@include flow
local held = checked_lease(ARGV[1], ARGV[2], nil, now_ms())
if held ~= 1 then return held end
redis.call('HSET', PREFIX .. ARGV[1], 'progress', ARGV[3])
emit('event', 'progress', 'id', ARGV[1], 'progress', ARGV[3])
return 0
