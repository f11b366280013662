#!lua flags=allow-oom
--[[ renew: extend the leases of all of a worker's jobs in one call.
KEYS: the standard queue keys (common.lua); uses active, job prefix.
ARGV: [1] lease_ms, then pairs: id, token
Returns: the tokens whose lease is lost (another token holds the job, or it is
  no longer active): matched by token, not id, so that a job that ended and was
  claimed again by the same worker is never mistaken for the old attempt.
Events: none, except for a damaged job, which is quarantined (common.lua).
Runs while Redis is out of memory (allow-oom): a renewal does not grow memory,
and without it every lease would run out during the episode.
]]
--@include common
--@include flow
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if checked_lease(id, ARGV[i + 1], nil, now) == 1 then
    redis.call('ZADD', k.active, 'XX', deadline, id)
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
