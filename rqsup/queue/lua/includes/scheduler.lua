-- Schedulers (repeatable jobs), shared by upsert_scheduler, scheduler_next,
-- scheduler_due and remove_scheduler. Their KEYS are the standard queue keys
-- (common.lua), then, last, the schedulers zset and the scheduler hash prefix
-- (rqsup.keys.QueueKeys.scheduler_keys); counted from the end, so they stay
-- put if the standard list grows.
-- Times travel as the decimal strings Python sent: Lua would print a large
-- number as 1.7e+12, and run times are part of job ids.

local sk = {zset = KEYS[#KEYS - 1], prefix = KEYS[#KEYS]}

local function hash_table(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- Has a scheduler's pending job started? Its processed_on (set by every
-- claim) when it has; '' when the job is gone (removed, drained, deleted
-- by retention: nothing is pending any more); nil while it is still waiting.
local function run_started(job_id)
  if not job_id or job_id == '' then return '' end
  local f = jmget(PREFIX .. job_id, 'processed_on', 'name')
  if not f then return '' end  -- damaged: nothing is pending any more
  if f[1] then return f[1] end
  if not f[2] then return '' end
  return nil
end

-- Remove a pending job that has not started (an older definition's run).
local function drop_pending(job_id)
  if run_started(job_id) ~= nil then return end
  local st = job_state(job_id)
  if st == 'active' then return end
  unlink_job(job_id, st)
  delete_job(job_id)
  emit('event', 'removed', 'id', job_id, 'prev', st)
end

-- Add the run of scheduler `sid` due at `run` (ms, a string) as a normal job
-- with the fields add.lua writes (keep the two in step), plus `scheduler`:
-- delayed until then, or ready at once when already due. The id
-- 'sched:<sid>:<run>' is deterministic, so adding the same run twice is a
-- no-op. Returns the job id.
local function add_run(sid, h, run, now)
  local id = 'sched:' .. sid .. ':' .. run
  local jk = PREFIX .. id
  if redis.call('EXISTS', jk) == 1 then return id end
  local delay = tonumber(run) - now
  if delay < 0 then delay = 0 end
  local priority = tonumber(h.priority) or 0
  redis.call('HSETNX', k.meta, 'version', '1')
  redis.call('HSET', jk, 'name', h.name, 'data', h.data, 'opts', h.opts, 'timestamp', now,
    'delay', delay, 'priority', priority, 'attempts', h.attempts, 'attempts_made', 0,
    'scheduler', sid)
  local state
  if delay > 0 then
    redis.call('ZADD', k.delayed, run, id)
    state = 'delayed'
  else
    state = push_ready(id, priority, h.lifo == '1')
  end
  wake()
  emit('event', 'added', 'id', id, 'name', h.name, 'state', state)
  return id
end

-- Make `run` (a string, or '' for none, then `reason` says why) the pending
-- run of scheduler `sid`: add its job, or mark the scheduler done when there
-- is no run or its limit is reached. Returns {job id or '', done reason or ''}.
local function schedule_run(sid, hk, run, reason, now)
  local h = hash_table(hk)
  local limit = tonumber(h.limit) or 0
  local count = tonumber(h.count) or 0
  if run ~= '' and limit > 0 and count >= limit then
    run = ''
    reason = 'limit'
  end
  if run == '' then
    redis.call('HSET', hk, 'next', '', 'job', '', 'done', reason)
    redis.call('ZADD', sk.zset, '+inf', sid)
    return {'', reason}
  end
  local id = add_run(sid, h, run, now)
  redis.call('HSET', hk, 'next', run, 'job', id, 'done', '', 'count', count + 1)
  redis.call('ZADD', sk.zset, run, sid)
  return {id, ''}
end
