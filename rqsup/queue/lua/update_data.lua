--[[ update_data: replace a job's data (JSON).
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] data (JSON)
Returns: 0 | -1 not found
Events: updated {id}.
]]
--@include common
if redis.call('EXISTS', PREFIX .. ARGV[1]) == 0 then return -1 end
redis.call('HSET', PREFIX .. ARGV[1], 'data', ARGV[2])
emit('event', 'updated', 'id', ARGV[1])
return 0
