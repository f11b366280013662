--[[ remove: delete a job that is not running, with its logs.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id
Returns: {0, state it was in} | {-1, ''} | {-4, 'active'}
Flows (flow.lua): the job's parent stops waiting for it (may become ready);
its pending (not active) children are removed, and theirs.
Events: removed {id, prev} (also per removed child, in its queue); waiting
        {id, prev=waiting-children} for a parent that became ready.
]]
--@include common
--@include flow
local id = ARGV[1]
local st = job_state(id)
if st == 'missing' then return {-1, ''} end
if st == 'active' then return {-4, st} end
unlink_job(id, st)
delete_job(id)
emit('event', 'removed', 'id', id, 'prev', st)
return {0, st}
