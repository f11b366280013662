--[[ remove_unprocessed_children: delete a parent's children that have not
finished and are not running (and their own pending children), as BullMQ's
job.removeUnprocessedChildren. Running children run on. A parent waiting
for children that then waits for none moves to wait.
KEYS: the standard queue keys (common.lua).
ARGV: [1] parent job id
Returns: the number of its own children deleted, or -1 (no such job).
Events: removed {id, prev} per child deleted (in the child's queue);
        waiting {id, prev=waiting-children} for a released parent.
]]
--@include common
--@include flow
local jk = PREFIX .. ARGV[1]
if redis.call('EXISTS', jk) == 0 then return -1 end
local own = delete_pending_children(jk)
for i = 1, #own, 5000 do
  redis.call('SREM', jk .. ':deps', unpack(own, i, math.min(i + 4999, #own)))
end
release_parent(jk)
return #own
