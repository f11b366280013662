--[[ state: the states of jobs, read atomically.
KEYS: the standard queue keys (common.lua).
ARGV: job ids
Returns: one state per id: wait, prioritized, delayed, active, completed,
  failed, waiting-children, missing (no such job) or unknown.
Events: none.
]]
--@include common
local out = {}
for i = 1, #ARGV do out[i] = job_state(ARGV[i]) end
return out
