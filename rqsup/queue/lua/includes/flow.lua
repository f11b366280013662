-- Flows: parents that wait for their children (docs/redis-schema.md, "Flows").
-- Included after common (and claim where used). A parent and its children may
-- live in different queues of the same prefix: their keys are built here from
-- the job keys stored in the hashes ("<prefix>:{<queue>}:job:<id>"). On Redis
-- Cluster this needs every queue of a flow in one slot (Python refuses a
-- flow across queues there).
--   child hash: parent = the parent's job key, parent_policy = fail|ignore|remove|continue
--   parent hash: has_children = 1; parent keys (deleted with the job by drop_job):
--     <job key>:deps             SET  job keys of the children not finished yet
--     <job key>:processed        HASH child job key -> return value (JSON)
--     <job key>:ignored          HASH child job key -> failed reason (policy ignore)
--     <job key>:failed_children  HASH child job key -> failed reason (fail, continue)

-- A job key -> its queue's keys (fq, from the generated keys include), its id.
local FQ_CACHE = {}
local function split_job_key(jk)
  local base = string.match(jk, '^(.-}):job:')
  local q = FQ_CACHE[base]
  if not q then
    q = fq(base)
    FQ_CACHE[base] = q
  end
  return q, string.sub(jk, #base + 6)
end

-- "<queue>:<id>", how people (and failed reasons) name a job of a flow.
local function job_ref(jk)
  local q, id = split_job_key(jk)
  return string.match(q.base, '{([^{}]*)}$') .. ':' .. id
end

local function fq_emit(q, ...)
  if not q.maxlen then
    q.maxlen = tonumber(redis.call('HGET', q.meta, 'max_events')) or 10000
  end
  return redis.call('XADD', q.events, 'MAXLEN', '~', q.maxlen, '*', ...)
end

local function fq_wake(q)
  if redis.call('HEXISTS', q.meta, 'paused') == 0 then
    redis.call('ZADD', q.marker, 0, 'w')
  end
end

-- A parent job key that is no job hash (damaged, or gone while its id still
-- waits in waiting-children): set it aside in its queue (as quarantine in
-- common.lua does for this queue). True when it was.
local function parent_damaged(pk)
  local t = redis.call('TYPE', pk).ok
  if t == 'hash' then return false end
  local q, pid = split_job_key(pk)
  if t == 'none' and not redis.call('ZSCORE', q.waiting_children, pid) then
    return true  -- removed on purpose: nothing waits for it
  end
  for _, z in ipairs({'waiting_children', 'active', 'delayed', 'prioritized'}) do
    redis.call('ZREM', q[z], pid)
  end
  redis.call('LREM', q.wait, 0, pid)
  redis.call('ZADD', q.malformed, tonumber(redis.call('TIME')[1]) * 1000, pid)
  local why = t == 'none' and 'no job hash exists for this id'
    or ('its key holds a ' .. t .. ', not a job hash')
  redis.call('HSET', q.malformed_why, pid, why)
  fq_emit(q, 'event', 'malformed', 'id', pid, 'reason', why)
  return true
end

-- push_ready (common.lua) for any queue.
local fq_push_ready = push_ready_in

-- job_state (common.lua) for any queue.
local function fq_state(q, id)
  for _, s in ipairs({'active', 'delayed', 'prioritized', 'completed', 'failed',
                      'waiting_children'}) do
    if redis.call('ZSCORE', q[s], id) then return (string.gsub(s, '_', '-')) end
  end
  if redis.call('LPOS', q.wait, id) then return 'wait' end
  if redis.call('EXISTS', q.job .. id) == 0 then return 'missing' end
  return 'unknown'
end

-- A parent with nothing pending that waits in waiting-children becomes ready
-- (`at_once`: whatever is pending, for failure policy continue).
local function release_parent(pk, at_once)
  if not at_once and redis.call('SCARD', pk .. ':deps') > 0 then return end
  local q, pid = split_job_key(pk)
  if not redis.call('ZSCORE', q.waiting_children, pid) then return end
  redis.call('ZREM', q.waiting_children, pid)
  -- A damaged parent goes to wait all the same: the claim quarantines it.
  fq_push_ready(q, pid, tonumber(jget(pk, 'priority')) or 0, false)
  fq_emit(q, 'event', 'waiting', 'id', pid, 'prev', 'waiting-children')
  fq_wake(q)
end

-- complete.lua: job `id` (this queue) completed with `value` (JSON).
local function flow_completed(id, value, pk)
  local ck = PREFIX .. id
  if pk == nil then pk = jget(ck, 'parent') end  -- false: read already, none
  if not pk or parent_damaged(pk) then return end
  redis.call('HSET', pk .. ':processed', ck, value)
  if redis.call('SREM', pk .. ':deps', ck) == 1 then release_parent(pk) end
end

-- Fail a parent that waits in waiting-children (a child with policy fail
-- failed), then its own parent by that parent's policy, and so on up. A
-- failed parent keeps its own remove_on_fail and releases its dedup key, as
-- any failed job. A parent in another state only keeps the record (a running
-- step job fails when it asks to wait: move_to_waiting_children); policy
-- continue records it too and lets the parent run now.
local function child_failed(ck, reason, now)
  local f = jmget(ck, 'parent', 'parent_policy') or {}
  while true do
    local pk, policy = f[1], f[2] or 'fail'
    if not pk or parent_damaged(pk) then return end
    if redis.call('SREM', pk .. ':deps', ck) == 0 then return end  -- not waited for
    if policy == 'ignore' then
      redis.call('HSET', pk .. ':ignored', ck, reason)
      release_parent(pk)
      return
    elseif policy == 'remove' then
      release_parent(pk)
      return
    end
    redis.call('HSET', pk .. ':failed_children', ck, reason)
    if policy == 'continue' then
      release_parent(pk, true)
      return
    end
    local q, pid = split_job_key(pk)
    if not redis.call('ZSCORE', q.waiting_children, pid) then return end
    reason = 'child ' .. job_ref(ck) .. ' failed: ' .. reason
    redis.call('ZREM', q.waiting_children, pid)
    redis.call('HSET', pk, 'failed_reason', reason, 'error_type', 'ChildFailed',
      'stacktrace', '', 'finished_on', now, 'ended', 'failed')
    fq_emit(q, 'event', 'failed', 'id', pid, 'reason', reason, 'error_type', 'ChildFailed',
      'stacktrace', '', 'attempts_made', jget(pk, 'attempts_made') or '0')
    f = jmget(pk, 'parent', 'parent_policy') or {}  -- read before retention may drop it
    local keep_count, keep_age = keep_failed_of(pk, DEFAULT_KEEP_FAILED_COUNT,
      DEFAULT_KEEP_FAILED_AGE_MS)
    finish_job(pid, q.failed, now, keep_count, keep_age, q)
    ck = pk
  end
end

-- fail.lua, sweep_stalled.lua, quarantine: job `id` (this queue) failed for good.
local function flow_failed(id, reason, now)
  child_failed(PREFIX .. id, reason, now)
end
on_fail_job = flow_failed

-- Delete the pending (not active) children of job key `jk`, and theirs, in
-- whatever queue they are. Active ones run on; their parent is gone, so
-- their outcome is recorded nowhere else. Returns the job keys of jk's own
-- children it deleted.
local function delete_pending_children(jk)
  local stack = {jk}
  local own = {}
  -- Children in a wait list are removed in one pass per list at the end: an
  -- LPOS + LREM per child would make a big tree quadratic in one script.
  local from_wait = {}  -- wait key -> {q = q, ids = {id = true}}
  while #stack > 0 do
    local pk = table.remove(stack)
    for _, ck in ipairs(redis.call('SMEMBERS', pk .. ':deps')) do
      local q, cid = split_job_key(ck)
      local st = nil
      for _, z in ipairs({'active', 'delayed', 'prioritized', 'completed', 'failed',
                          'waiting_children'}) do
        if redis.call('ZSCORE', q[z], cid) then st = z break end
      end
      if st == nil then
        st = (redis.call('EXISTS', q.job .. cid) == 1) and 'wait' or 'missing'
      end
      if st ~= 'active' and st ~= 'missing' then
        if st == 'wait' then
          local w = from_wait[q.wait]
          if not w then w = {q = q, ids = {}} from_wait[q.wait] = w end
          w.ids[cid] = true
        else
          redis.call('ZREM', q[st], cid)
        end
        fq_emit(q, 'event', 'removed', 'id', cid, 'prev', (string.gsub(st, '_', '-')))
        stack[#stack + 1] = ck
        if pk == jk then own[#own + 1] = ck end
      end
    end
    if pk ~= jk then
      redis.call('DEL', pk, pk .. ':logs', pk .. ':deps', pk .. ':processed', pk .. ':ignored',
        pk .. ':failed_children')
    end
  end
  for wkey, w in pairs(from_wait) do
    local keep = {}
    for _, id in ipairs(redis.call('LRANGE', wkey, 0, -1)) do
      if not w.ids[id] then keep[#keep + 1] = id end
    end
    redis.call('DEL', wkey)
    for i = 1, #keep, 5000 do
      redis.call('RPUSH', wkey, unpack(keep, i, math.min(i + 4999, #keep)))
    end
  end
  return own
end

-- Deleting job `id` (remove, clean, drain, obliterate): its parent no longer
-- waits for it (as policy remove), and its pending children are deleted.
on_delete_job = function(id)
  local jk = PREFIX .. id
  local pk = jget(jk, 'parent')
  if pk and redis.call('SREM', pk .. ':deps', jk) == 1 then release_parent(pk) end
  delete_pending_children(jk)
end

-- Create the jobs of a flow from ARGV[b]: Qn, then Qn queue bases, then N,
-- then 12 values per job in pre-order (a parent before its children):
-- queue index (1-based), custom id ('' = auto), name, data, opts, delay_ms,
-- priority, lifo (0/1), attempts, parent index (0: none, or `root_parent`),
-- failure policy ('' for no parent), is a parent (0/1).
-- root_parent: job key of an existing parent for jobs with parent index 0.
-- Returns {0, ids...} | {1, index of a job whose custom id exists}.
local FLOW_FIELDS = 12
local function create_flow(b, root_parent, now)
  local qn = tonumber(ARGV[b])
  local queues = {}
  for i = 1, qn do
    queues[i] = fq(ARGV[b + i])
    redis.call('HSETNX', queues[i].meta, 'version', '1')
  end
  local n = tonumber(ARGV[b + qn + 1])
  local first = b + qn + 2
  for i = 0, n - 1 do
    local j = first + i * FLOW_FIELDS
    local id = ARGV[j + 1]
    if id ~= '' and redis.call('EXISTS', queues[tonumber(ARGV[j])].job .. id) == 1 then
      return {1, i + 1}
    end
  end
  local keys, out, woken = {}, {0}, {}
  for i = 0, n - 1 do
    local j = first + i * FLOW_FIELDS
    local qi = tonumber(ARGV[j])
    local q = queues[qi]
    local id = ARGV[j + 1]
    if id == '' then id = tostring(redis.call('INCR', q.id)) end
    local jk = q.job .. id
    keys[i + 1] = jk
    out[#out + 1] = id
    local delay, priority = tonumber(ARGV[j + 5]), tonumber(ARGV[j + 6])
    local fields = {'name', ARGV[j + 2], 'data', ARGV[j + 3], 'opts', ARGV[j + 4],
      'timestamp', now, 'delay', delay, 'priority', priority, 'attempts', ARGV[j + 8],
      'attempts_made', 0}
    local pi = tonumber(ARGV[j + 9])
    local pk = root_parent
    if pi > 0 then pk = keys[pi] end
    if pk then
      fields[#fields + 1] = 'parent'
      fields[#fields + 1] = pk
      fields[#fields + 1] = 'parent_policy'
      fields[#fields + 1] = ARGV[j + 10]
      redis.call('SADD', pk .. ':deps', jk)
    end
    local is_parent = ARGV[j + 11] == '1'
    if is_parent then
      fields[#fields + 1] = 'has_children'
      fields[#fields + 1] = 1
    end
    redis.call('HSET', jk, unpack(fields))
    local state
    if is_parent then
      redis.call('ZADD', q.waiting_children, now, id)
      state = 'waiting-children'
    else
      if delay > 0 then
        redis.call('ZADD', q.delayed, now + delay, id)
        state = 'delayed'
      else
        state = fq_push_ready(q, id, priority, ARGV[j + 7] == '1')
      end
      if not woken[qi] then
        fq_wake(q)
        woken[qi] = true
      end
    end
    fq_emit(q, 'event', 'added', 'id', id, 'name', ARGV[j + 2], 'state', state)
  end
  return out
end
