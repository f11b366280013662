--[[ fail: token-checked end of a failed attempt, for a batch.
The worker computes the backoff (custom strategies live in Python) and says
whether to retry; the script still refuses a retry once attempts are spent.
KEYS: the standard queue keys (common.lua).
ARGV: [1] number of failures F, then 9 values per failure:
      id, token, reason, error type, stack trace,
      retry_delay_ms (-1: fail for good, e.g. UnrecoverableError),
      keep_count, keep_age_ms (retention of failed jobs, as in complete.lua),
      attempts ('' : the job's own; a number: the queue default the worker
      applied to a job that did not set attempts)
Returns: {code per failure}: 1 retry now (wait), 2 retry later (delayed),
  3 failed for good, 0 this token already failed this attempt (idempotent resend; a token that completed the job gets -3),
  -1 job not found, -2 lease lost, -3 not active, -6 malformed (quarantined
  instead, as in complete.lua).
Events: retrying {id, attempts_made, delay, reason} or
        failed {id, reason, error_type, stacktrace, attempts_made}. Flows
        (flow.lua): a child failed for good applies its parent_policy: a
        parent failed by it emits failed {error_type=ChildFailed} (and so on
        up); a parent it was the last pending child of emits waiting.
]]
--@include common
--@include claim
--@include flow
--@include history
local now = now_ms()
local f = tonumber(ARGV[1])
local codes = {}
for i = 0, f - 1 do
  local b = 2 + i * 9
  local id, token = ARGV[b], ARGV[b + 1]
  local reason, etype, stack = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local delay = tonumber(ARGV[b + 5])
  local held, worker, made, seen = checked_lease(id, token, 'failed', now, 'attempts_made',
    HIST_FIELDS)
  if held == 1 then
    local jk = PREFIX .. id
    deactivate(id, worker)
    made = made + 1
    local attempts = tonumber(ARGV[b + 8]) or tonumber(redis.call('HGET', jk, 'attempts')) or 1
    redis.call('HSET', jk, 'failed_reason', reason, 'error_type', etype, 'stacktrace', stack,
      'ended', 'failed', 'attempts_made', made)
    if delay >= 0 and made < attempts then
      if delay > 0 then
        redis.call('ZADD', k.delayed, now + delay, id)
        codes[#codes + 1] = 2
      else
        push_ready(id, job_priority(id), false)
        codes[#codes + 1] = 1
      end
      wake(delay > 0)
      emit('event', 'retrying', 'id', id, 'attempts_made', made, 'delay', delay, 'reason', reason)
    else
      redis.call('HSET', jk, 'finished_on', now)
      emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', etype,
        'stacktrace', stack, 'attempts_made', made)
      history_record('f', seen, now)
      on_fail_job(id, reason, now)  -- a parent waiting for it (flows)
      finish_job(id, k.failed, now, tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7]))
      codes[#codes + 1] = 3
    end
  else
    codes[#codes + 1] = held
  end
end
history_flush(now)
if f > 0 then wake_if_capped() end
return codes
