--[[ add_to_parent: add a job as a new child of an existing parent (BullMQ's
opts.parent on Queue.add). The parent waits for it as for any child: one in
waiting-children keeps waiting; one still pending or running waits for it
once it moves to waiting-children. A finished parent is refused.
KEYS: the standard queue keys (common.lua) of the parent's queue.
ARGV: [1] parent id, then the flow as add_flow.lua's ARGV (one job, parent
      index 0: it becomes the parent's child).
Returns: {0, id} | {1, 1} the child's custom id exists (nothing written) |
  {-1, ''} no such parent | {-4, state} the parent is finished.
Events: added {id, name, state}, in the child's queue.
]]
--@include common
--@include flow
local pid = ARGV[1]
local jk = PREFIX .. pid
local st = job_state(pid)
if st == 'missing' then return {-1, ''} end
if st == 'completed' or st == 'failed' then return {-4, st} end
local out = create_flow(2, jk, now_ms())
if out[1] ~= 0 then return out end
redis.call('HSET', jk, 'has_children', 1)
return out
