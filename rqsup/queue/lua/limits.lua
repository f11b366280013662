--[[ limits: read or change a queue's queue-wide limits, held in meta and
enforced inside every claim (includes/claim.lua): a rate limit (at most
limiter_max claims per limiter_duration_ms window, counted in the limiter
key), a global concurrency cap (at most `concurrency` active jobs), and a
manual limit (no claims for delay_ms: after an upstream 429).
KEYS: the standard queue keys (common.lua).
ARGV: [1] limiter_max ('' unchanged, '0' remove the rate limit),
      [2] limiter_duration_ms (with [1] > 0),
      [3] concurrency ('' unchanged, '0' remove the cap),
      [4] manual delay_ms ('' none; '0' lifts a manual limit)
Returns: {limiter_max or -1, limiter_duration_ms or -1, concurrency or -1,
  ms until the current limit lifts (-1: not limited now)}
Events: limits {max, duration, concurrency} when something changed;
  rate-limited {delay} for a manual limit.
]]
--@include common
--@include claim
local changed = false
if ARGV[1] == '0' then
  redis.call('HDEL', k.meta, 'limiter_max', 'limiter_duration_ms')
  redis.call('DEL', LIMITER)
  changed = true
elseif ARGV[1] ~= '' then
  redis.call('HSET', k.meta, 'limiter_max', ARGV[1], 'limiter_duration_ms', ARGV[2])
  changed = true
end
if ARGV[3] == '0' then
  redis.call('HDEL', k.meta, 'concurrency')
  changed = true
elseif ARGV[3] ~= '' then
  redis.call('HSET', k.meta, 'concurrency', ARGV[3])
  changed = true
end
if ARGV[4] ~= '' then
  local delay = tonumber(ARGV[4])
  if delay > 0 then
    set_manual_limit(delay)
    emit('event', 'rate-limited', 'delay', delay)
  else
    redis.call('DEL', MANUAL_LIMIT)
  end
  changed = true
end
local m = redis.call('HMGET', k.meta, 'limiter_max', 'limiter_duration_ms', 'concurrency')
if changed then
  emit('event', 'limits', 'max', m[1] or '', 'duration', m[2] or '', 'concurrency', m[3] or '')
  wake()  -- blocked workers re-check what they may claim now
end
local _n, wait_ms = claim_budget(1)
return {tonumber(m[1]) or -1, tonumber(m[2]) or -1, tonumber(m[3]) or -1, wait_ms}
