--[[ sweep_stalled: requeue (or fail) active jobs whose lease expired.
One sweep per interval across every worker: the stall-check key is taken
with SET NX PX. A requeued job goes to the pop end of wait (taken next).
A stall counts as an attempt when asked (ARGV[3]); a job failed by the stall
limit counts the attempt it was in (as BullMQ does) and keeps its own
retention when its options say (ARGV[5], [6] are the defaults).
KEYS: the standard queue keys (common.lua).
ARGV: [1] interval_ms (0: sweep regardless of the stall-check key),
      [2] max_stalled_count, [3] stall counts as an attempt (0/1),
      [4] at most this many jobs per call,
      [5] keep_count, [6] keep_age_ms (retention of failed jobs)
Returns: {swept (0/1), requeued ids, failed ids}
Stall forensics: the job keeps stalled_at (ms); the stalled event carries
  who held it (worker, holder_pid) and when it was last renewed and started.
Events: stalled {id, count, worker, holder_pid, renewed_at, started_at};
        failed {id, reason, ...} past the limits
        (and, for a flow child, what fail.lua emits for its parent); a
        damaged job is quarantined (common.lua).
]]
--@include common
--@include flow
--@include claim
--@include history
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
  local problem = job_problem(id)
  local worker = jget(jk, 'worker')
  deactivate(id, worker)
  if worker and redis.call('EXISTS', P.worker_jobs .. worker) == 0 then
    redis.call('SREM', k.workers, worker)
  end
  if problem then
    if quarantine(id, problem, now) == 'failed' then failed[#failed + 1] = id end
  elseif fail_if_cancelled(id, jk, now) then
    failed[#failed + 1] = id  -- it was cancelled: it does not run again
    history_record('f', nil, now)
  else
    redis.call('HDEL', jk, 'token')
    local stc = redis.call('HINCRBY', jk, 'stalled_count', 1)
    redis.call('HSET', jk, 'stalled_at', now)
    local seen = jmget(jk, 'renewed_at', 'holder_pid', 'processed_on') or {}
    emit('event', 'stalled', 'id', id, 'count', stc, 'worker', worker or '',
      'holder_pid', seen[2] or '', 'renewed_at', seen[1] or '', 'started_at', seen[3] or '')
    local reason = nil
    if stc > max_stalled then
      reason = 'job stalled ' .. stc .. ' times (max_stalled_count=' .. max_stalled ..
        '): its worker died or lost Redis for longer than the lease, each time'
    elseif counts_attempt then
      local made = tonumber(redis.call('HGET', jk, 'attempts_made')) or 0
      local attempts = tonumber(redis.call('HGET', jk, 'attempts')) or 1
      if made + 1 >= attempts then
        reason = 'job stalled on its last attempt (' .. (made + 1) .. ' of ' .. attempts .. ')'
      else
        redis.call('HINCRBY', jk, 'attempts_made', 1)
      end
    end
    if reason then
      local made = redis.call('HINCRBY', jk, 'attempts_made', 1)
      redis.call('HSET', jk, 'failed_reason', reason, 'error_type', 'Stalled',
        'stacktrace', '', 'finished_on', now, 'ended', 'failed')
      emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', 'Stalled',
        'stacktrace', '', 'attempts_made', made)
      on_fail_job(id, reason, now)  -- a parent waiting for it (flows)
      -- The job's own remove_on_fail (stored in opts as keep_failed), else the default.
      local keep_count, keep_age = keep_failed_of(jk, tonumber(ARGV[5]), tonumber(ARGV[6]))
      finish_job(id, k.failed, now, keep_count, keep_age)
      history_record('f', nil, now)
      failed[#failed + 1] = id
    else
      mark_redelivery(jk)
      push_ready(id, job_priority(id), true)
      requeued[#requeued + 1] = id
    end
  end
end
history_flush(now)
if #requeued > 0 then wake() end
if #failed > 0 then wake_if_capped() end  -- slots freed under a concurrency cap
return {1, requeued, failed}
