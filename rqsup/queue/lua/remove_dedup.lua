--[[ remove_dedup: delete a deduplication key, so the next add with that
dedup id creates a job (the job that held it is left alone).
KEYS: the standard queue keys (common.lua); deletes dedup:<dedup id> (and
      dedup-next:<dedup id>, an add kept for after its job).
ARGV: [1] dedup id, [2] job id: delete only while the key names this job
      ('' = whatever job it names)
Returns: 1 deleted, 0 no such key (or it names another job).
Events: none.
]]
--@include common
local dk = dedup_key(ARGV[1])
local held = redis.call('GET', dk)
if not held or (ARGV[2] ~= '' and held ~= ARGV[2]) then return 0 end
redis.call('DEL', dk, P.dedup_next .. ARGV[1])  -- and an add kept for after it
return 1
