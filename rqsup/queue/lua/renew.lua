--[[ renew: extend the leases of all of a worker's jobs in one call.
KEYS: the standard queue keys (common.lua); uses active, job prefix.
ARGV: [1] lease_ms, then pairs: id, token
Returns: the ids whose lease is lost (token changed, or no longer active).
Events: none.
]]
--@include common
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if check_lease(id, ARGV[i + 1]) == 1 then
    redis.call('ZADD', k.active, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
