--[[ move_to_waiting_children: a running job raised WaitingChildren (step
jobs): token-checked, it leaves active
  - for failed, when a child with policy fail failed meanwhile (its reason
    names the child; its own parent is told, as fail.lua does);
  - for waiting-children while it has children not finished (the last one
    to finish makes it ready again);
  - for the front of wait when all its children finished already (it runs
    again at once; attempts are not spent);
  - for failed when it never had children (a processor bug: it would loop).
KEYS: the standard queue keys (common.lua).
ARGV: [1] id, [2] token, [3] keep_count, [4] keep_age_ms (retention of failed
      jobs, as in fail.lua)
Returns: 1 waiting-children, 2 requeued (no pending children), 3 failed,
  0 this token already moved it (a resend), -1 job not found, -2 lease lost,
  -3 not active, -6 malformed (quarantined, common.lua).
Events: waiting-children {id}; waiting {id, prev=active}; failed {id, reason,
        error_type=ChildFailed | NoChildren, stacktrace='',
        attempts_made}.
]]
--@include common
--@include claim
--@include flow
local id, token = ARGV[1], ARGV[2]
local now = now_ms()
local held, worker, made = checked_lease(id, token, 'waiting-children', now, 'attempts_made')
if held ~= 1 then return held end
local jk = PREFIX .. id
deactivate(id, worker)
redis.call('HSET', jk, 'ended', 'waiting-children')
local code
local failed = redis.call('HGETALL', jk .. ':failed_children')
local reason, etype = nil, 'ChildFailed'
if #failed > 0 then
  reason = 'child ' .. job_ref(failed[1]) .. ' failed: ' .. failed[2]
elseif redis.call('SCARD', jk .. ':deps') > 0 then
  redis.call('ZADD', k.waiting_children, now, id)
  emit('event', 'waiting-children', 'id', id)
  code = 1
elseif redis.call('HEXISTS', jk, 'has_children') == 1 then
  -- Pending again: a scheduler must not count this run as started.
  redis.call('HDEL', jk, 'processed_on')
  push_ready(id, job_priority(id), true)
  emit('event', 'waiting', 'id', id, 'prev', 'active')
  wake()
  code = 2
else
  reason = 'the processor raised WaitingChildren but the job has no children'
  etype = 'NoChildren'
end
if reason then
  made = made + 1
  redis.call('HSET', jk, 'failed_reason', reason, 'error_type', etype,
    'stacktrace', '', 'finished_on', now, 'attempts_made', made)
  emit('event', 'failed', 'id', id, 'reason', reason, 'error_type', etype,
    'stacktrace', '', 'attempts_made', made)
  on_fail_job(id, reason, now)
  finish_job(id, k.failed, now, tonumber(ARGV[3]), tonumber(ARGV[4]))
  code = 3
end
wake_if_capped()
return code
