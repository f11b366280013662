--[[ log: append lines to a running job's log list, fenced, capped, idempotent.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] token, [3] keep at most this many lines, [4] sequence
      number of this call for the token (a resend of a call already applied
      appends nothing), then lines
Returns: number of lines kept, or -1/-2/-3/-6 when the caller does not hold the
  lease (-6: the job is malformed and was quarantined).
Events: none (logs are read with job.logs()).
]]
--@include common
--@include flow
local id, token, seq = ARGV[1], ARGV[2], tonumber(ARGV[4])
local held = checked_lease(id, token, nil, now_ms())
if held ~= 1 then return held end
local jk = PREFIX .. id
local last = redis.call('HGET', jk, 'log_seq')
if last then
  local sep = string.find(last, ':', 1, true)
  if sep and string.sub(last, 1, sep - 1) == token and tonumber(string.sub(last, sep + 1)) >= seq then
    local n = redis.pcall('LLEN', jk .. ':logs')
    if is_err(n) then return 0 end
    return n
  end
end
redis.call('HSET', jk, 'log_seq', token .. ':' .. seq)
local lk = jk .. ':logs'
if redis.call('TYPE', lk).ok ~= 'list' then redis.call('DEL', lk) end
local n = 0
for i = 5, #ARGV do n = redis.call('RPUSH', lk, ARGV[i]) end
local keep = tonumber(ARGV[3])
if keep == 0 then
  redis.call('DEL', lk)
  n = 0
elseif n > keep then
  redis.call('LTRIM', lk, -keep, -1)
  n = keep
end
return n
