--[[ cancel: stop a job, from any process (queue.cancel).
A running job is marked (field cancel = "<token> <reason>": only that
attempt, not a later one after a retry) and its worker is told: a
PUBLISH on the queue's cancel channel now, and renew.lua's reply as a
backstop (a worker that missed the message hears at its next renewal). The
worker then stops the processor and fails the job with JobCancelled (no
retry), unless the processor returns or raises something else. A job that is
not running fails at once with JobCancelled: it never starts.
KEYS: the standard queue keys (common.lua).
ARGV: [1] job id, [2] reason, [3] keep_count, [4] keep_age_ms (the default
      retention of failed jobs; a job's own remove_on_fail wins), [5] the
      cancel channel (QueueKeys.cancel_channel)
Returns: {1, ''} running: marked and its worker told | {2, prev state}
  failed at once | {-1, ''} no such job | {-4, state} finished (or set aside).
Events: cancelled {id, reason, prev}; for a job failed at once also failed
        {id, reason, error_type=JobCancelled, ...} (and its parent's, flows).
]]
--@include common
--@include flow
--@include history
local id, reason = ARGV[1], ARGV[2]
local st = job_state(id)
if st == 'missing' then return {-1, ''} end
if st == 'completed' or st == 'failed' or st == 'malformed' or st == 'unknown' then
  return {-4, st}
end
local jk = PREFIX .. id
local now = now_ms()
if st == 'active' then
  local token = jget(jk, 'token') or ''
  redis.call('HSET', jk, 'cancel', token .. ' ' .. reason)
  emit('event', 'cancelled', 'id', id, 'reason', reason, 'prev', st)
  redis.call('PUBLISH', ARGV[5], cjson.encode({id, token, reason}))
  return {1, ''}
end
unlink_job(id, st)
redis.call('HSET', jk, 'failed_reason', reason, 'error_type', 'JobCancelled',
  'stacktrace', '', 'finished_on', now, 'ended', 'failed')
emit('event', 'cancelled', 'id', id, 'reason', reason, 'prev', st)
emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', 'JobCancelled',
  'stacktrace', '', 'attempts_made', jget(jk, 'attempts_made') or '0')
on_fail_job(id, reason, now)
local keep_count, keep_age = keep_failed_of(jk, tonumber(ARGV[3]), tonumber(ARGV[4]))
finish_job(id, k.failed, now, keep_count, keep_age)
history_record('f', nil, now)
history_flush(now)
return {2, st}
