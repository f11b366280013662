--[[ clean: remove jobs of one state older than a grace period.
Age is finished_on for completed/failed (their zset score) and the creation
timestamp for the other states. Active jobs are never cleaned.
KEYS: the standard queue keys (common.lua).
ARGV: [1] state, [2] grace_ms, [3] at most this many removed per call
Returns: the removed ids.
Events: cleaned {state, count}.
]]
--@include common
--@include flow
local state, limit = ARGV[1], tonumber(ARGV[3])
if state == 'active' then return {} end
local cutoff = now_ms() - tonumber(ARGV[2])
local removed = {}
if state == 'completed' or state == 'failed' then
  local set = k[state]
  removed = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, limit)
  for _, id in ipairs(removed) do
    redis.call('ZREM', set, id)
    delete_job(id)
  end
else
  -- Scan from the oldest end in pages; bounded to 10 pages per call.
  local is_list = state == 'wait'
  local key = is_list and k.wait or k[string.gsub(state, '-', '_')]
  local page, start = 500, 0
  for _ = 1, 10 do
    local ids
    if is_list then
      ids = redis.call('LRANGE', key, -(start + page), -(start + 1))
    else
      ids = redis.call('ZRANGE', key, start, start + page - 1)
    end
    if #ids == 0 then break end
    local kept = 0
    for _, id in ipairs(ids) do
      local ts = tonumber(jget(PREFIX .. id, 'timestamp')) or 0
      if ts <= cutoff and #removed < limit then
        removed[#removed + 1] = id
        if is_list then redis.call('LREM', key, 0, id) else redis.call('ZREM', key, id) end
      else
        kept = kept + 1
      end
    end
    start = start + kept
    if #removed >= limit or #ids < page then break end
  end
  for _, id in ipairs(removed) do delete_job(id) end
end
if #removed > 0 then emit('event', 'cleaned', 'state', state, 'count', #removed) end
return removed
