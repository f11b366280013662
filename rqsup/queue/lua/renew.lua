#!lua flags=allow-oom
--[[ renew: extend the leases of all of a worker's jobs in one call.
KEYS: the standard queue keys (common.lua); uses active, job prefix.
ARGV: [1] lease_ms, then triples: id, token, the pid that runs it ('' unknown)
Stall forensics: each held job records renewed_at (ms) and holder_pid, so a
  job that stalls later shows who held it and when it was last alive.
Returns: {lost, cancelled}: the tokens whose lease is lost (another token
  holds the job, or it is no longer active): matched by token, not id, so
  that a job that ended and was claimed again by the same worker is never
  mistaken for the old attempt; and token, reason pairs of held jobs that
  were cancelled (field cancel, for this token: the backstop to cancel.lua's
  PUBLISH).
Events: none, except for a damaged job, which is quarantined (common.lua).
Runs while Redis is out of memory (allow-oom): a renewal grows memory only by
the two forensics fields of a job the first time (tens of bytes), and without
it every lease would run out during the episode.
]]
--@include common
--@include flow
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local lost, cancelled = {}, {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if checked_lease(id, ARGV[i + 1], nil, now) == 1 then
    redis.call('ZADD', k.active, 'XX', deadline, id)
    if ARGV[i + 2] ~= '' then
      redis.call('HSET', PREFIX .. id, 'renewed_at', now, 'holder_pid', ARGV[i + 2])
    else
      redis.call('HSET', PREFIX .. id, 'renewed_at', now)
    end
    local c = redis.call('HGET', PREFIX .. id, 'cancel')
    if c then
      local tok = ARGV[i + 1]
      if string.sub(c, 1, #tok + 1) == tok .. ' ' then  -- this attempt's
        cancelled[#cancelled + 1] = tok
        cancelled[#cancelled + 1] = string.sub(c, #tok + 2)
      end
    end
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return {lost, cancelled}
