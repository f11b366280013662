--[[ log: append lines to a running job's log list, fenced, capped.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] token, [3] keep at most this many lines, then lines
Returns: number of lines kept, or -1/-2/-3 when the caller does not hold the lease.
Events: none (logs are read with job.logs()).
]]
--@include common
local held = check_lease(ARGV[1], ARGV[2])
if held ~= 1 then return held end
local lk = PREFIX .. ARGV[1] .. ':logs'
local n = 0
for i = 4, #ARGV do n = redis.call('RPUSH', lk, ARGV[i]) end
local keep = tonumber(ARGV[3])
if keep == 0 then
  redis.call('DEL', lk)
  n = 0
elseif n > keep then
  redis.call('LTRIM', lk, -keep, -1)
  n = keep
end
return n
