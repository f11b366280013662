--[[ remove: delete a job that is not running, with its logs.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id
Returns: {0, state it was in} | {-1, ''} | {-4, 'active'}
Events: removed {id, prev}.
]]
--@include common
local id = ARGV[1]
local st = job_state(id)
if st == 'missing' then return {-1, ''} end
if st == 'active' then return {-4, st} end
unlink_job(id, st)
delete_job(id)
emit('event', 'removed', 'id', id, 'prev', st)
return {0, st}
