--[[ retry: move finished jobs back to wait (BullMQ's job.retry / retryJobs).
Clears the previous outcome and stalled_count; attempts_made and
attempts_started only when asked (BullMQ's defaults: kept, so a job whose
attempts are spent runs once more and fails for good on its next failure).
KEYS: the standard queue keys (common.lua).
ARGV: [1] state the jobs must be in ('failed' or 'completed'),
      [2] job id, or '' for the oldest jobs of that state; [3] at most this many,
      [4] reset attempts_made (0/1), [5] reset attempts_started (0/1),
      [6] only jobs finished at or before this time (ms; '' any)
Returns: {code, state or count}: {0, n}, {-1, ''}, {-4, state}, {-6, reason}
  (malformed: set aside, quarantine in common.lua)
Events: retried {id}.
]]
--@include common
--@include flow
local set = ARGV[1] == 'completed' and k.completed or k.failed
local ids
if ARGV[2] ~= '' then
  local id = ARGV[2]
  if not redis.call('ZSCORE', set, id) then
    local st = job_state(id)
    if st == 'missing' then return {-1, ''} end
    return {-4, st}
  end
  ids = {id}
else
  local before = ARGV[6] ~= '' and ARGV[6] or '+inf'
  ids = redis.call('ZRANGEBYSCORE', set, '-inf', before, 'LIMIT', 0, tonumber(ARGV[3]))
end
local n, now = 0, now_ms()
for _, id in ipairs(ids) do
  local jk = PREFIX .. id
  redis.call('ZREM', set, id)
  local problem = key_problem(id)
  if problem then
    quarantine(id, problem, now)
    if ARGV[2] ~= '' then return {-6, problem[1]} end
  else
  redis.call('HDEL', jk, 'finished_on', 'processed_on', 'failed_reason', 'error_type',
    'stacktrace', 'returnvalue', 'token', 'ended')
  redis.call('HSET', jk, 'stalled_count', 0)
  if ARGV[4] == '1' then redis.call('HSET', jk, 'attempts_made', 0) end
  if ARGV[5] == '1' then redis.call('HSET', jk, 'attempts_started', 0) end
  push_ready(id, job_priority(id), false)
  emit('event', 'retried', 'id', id)
  n = n + 1
  end
end
if n > 0 then wake() end
return {0, n}
