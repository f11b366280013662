--[[ sweep_stalled: requeue (or fail) active jobs whose lease expired.
One sweep per interval across every worker: the stall-check key is taken
with SET NX PX. A requeued job goes to the pop end of wait (taken next).
KEYS: the standard queue keys (common.lua).
ARGV: [1] interval_ms (0: sweep regardless of the stall-check key),
      [2] max_stalled_count, [3] stall counts as an attempt (0/1),
      [4] at most this many jobs per call,
      [5] keep_count, [6] keep_age_ms (retention of failed jobs)
Returns: {swept (0/1), requeued ids, failed ids}
Events: stalled {id, count}; failed {id, reason, ...} past the limits (and,
        for a flow child, what fail.lua emits for its parent).
]]
--@include common
--@include flow
--@include claim
local interval = tonumber(ARGV[1])
if interval > 0 and not redis.call('SET', k.stall_check, '1', 'NX', 'PX', interval) then
  return {0, {}, {}}
end
local now = now_ms()
local max_stalled = tonumber(ARGV[2])
local counts_attempt = ARGV[3] == '1'
local requeued, failed = {}, {}
local expired = redis.call('ZRANGEBYSCORE', k.active, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  local jk = PREFIX .. id
  redis.call('ZREM', k.active, id)
  redis.call('HDEL', jk, 'token')
  if redis.call('EXISTS', jk) == 1 then
    local stc = redis.call('HINCRBY', jk, 'stalled_count', 1)
    emit('event', 'stalled', 'id', id, 'count', stc)
    local reason = nil
    if stc > max_stalled then
      reason = 'job stalled ' .. stc .. ' times (max_stalled_count=' .. max_stalled ..
        '): its worker died or lost Redis for longer than the lease, each time'
    elseif counts_attempt then
      local made = redis.call('HINCRBY', jk, 'attempts_made', 1)
      local attempts = tonumber(redis.call('HGET', jk, 'attempts')) or 1
      if made >= attempts then
        reason = 'job stalled on its last attempt (' .. made .. ' of ' .. attempts .. ')'
      end
    end
    if reason then
      redis.call('HSET', jk, 'failed_reason', reason, 'error_type', 'Stalled',
        'stacktrace', '', 'finished_on', now)
      emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', 'Stalled',
        'stacktrace', '', 'attempts_made', redis.call('HGET', jk, 'attempts_made') or '0')
      flow_failed(id, reason, now)  -- a parent waiting for it (flows)
      finish_job(id, k.failed, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
      failed[#failed + 1] = id
    else
      push_ready(id, job_priority(id), true)
      requeued[#requeued + 1] = id
    end
  else
    emit('event', 'orphan-dropped', 'id', id)
  end
end
if #requeued > 0 then wake() end
if #failed > 0 then wake_if_capped() end  -- slots freed under a concurrency cap
return {1, requeued, failed}
