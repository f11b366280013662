--[[ update_data: replace a job's data (JSON).
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] data (JSON)
Returns: 0 | -1 not found | -6 its key is no job hash (nothing written)
Events: updated {id}.
]]
--@include common
local problem = key_problem(ARGV[1])
if problem then return problem[2] == 'missing' and -1 or -6 end
redis.call('HSET', PREFIX .. ARGV[1], 'data', ARGV[2])
emit('event', 'updated', 'id', ARGV[1])
return 0
