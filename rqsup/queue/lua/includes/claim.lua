-- Claiming, shared by claim.lua and complete.lua.

-- Move due delayed jobs to wait/prioritized (at most 1000 per call).
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', k.delayed, id)
    push_ready(id, job_priority(id), false)
    emit('event', 'waiting', 'id', id, 'prev', 'delayed')
  end
end

-- Claim up to n ready jobs for `worker` with a lease of lease_ms.
-- Returns {next_delayed_in_ms or -1, {id, token, hgetall}, ...}.
local function claim_jobs(n, worker, lease_ms, now)
  local out = {-1}
  promote_due(now)
  if n > 0 and redis.call('HEXISTS', k.meta, 'paused') == 0 then
    local ids = redis.call('RPOP', k.wait, n) or {}
    if #ids < n then
      local p = redis.call('ZPOPMIN', k.prioritized, n - #ids)
      for i = 1, #p, 2 do ids[#ids + 1] = p[i] end
    end
    local deadline = now + lease_ms
    for _, id in ipairs(ids) do
      local jk = PREFIX .. id
      if redis.call('EXISTS', jk) == 1 then
        local token = tostring(redis.call('INCR', k.fence))
        redis.call('ZADD', k.active, deadline, id)
        redis.call('HSET', jk, 'token', token, 'worker', worker, 'processed_on', now)
        redis.call('HINCRBY', jk, 'attempts_started', 1)
        emit('event', 'active', 'id', id)
        out[#out + 1] = {id, token, redis.call('HGETALL', jk)}
      else
        -- An id whose hash is gone (deleted by hand): drop it, say so, go on.
        emit('event', 'orphan-dropped', 'id', id)
      end
    end
    -- More ready work than we took: wake another blocked worker.
    if #ids == n and (redis.call('LLEN', k.wait) > 0 or redis.call('ZCARD', k.prioritized) > 0) then
      redis.call('ZADD', k.marker, 0, 'w')
    end
  end
  local nxt = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    local delta = tonumber(nxt[2]) - now
    if delta < 0 then delta = 0 end
    out[1] = delta
  end
  return out
end
