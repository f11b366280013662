--[[ requeue_worker: give back the active jobs a worker holds but no longer runs.
Used after a claim whose reply was lost (the worker never learnt the jobs), by
a worker whose loop crashed (its jobs go back at once, counted as a stall) and
at a worker's close. Costs the worker's own jobs: they are listed in its
worker-jobs set (maintained by every script that activates or ends a job).
KEYS: the standard queue keys (common.lua).
ARGV: [1] worker id, [2] count as a stall (0/1), then tokens still running
      (jobs holding one of these are left alone)
Returns: the requeued ids.
Events: requeued {id, worker}; a damaged job is quarantined (common.lua).
]]
--@include common
--@include flow
local worker = ARGV[1]
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local now = now_ms()
local mine = P.worker_jobs .. worker
local out = {}
-- In lease order (as ZRANGE of active would list them), so requeued jobs line
-- up in the order they were claimed.
local held = {}
for _, id in ipairs(redis.call('SMEMBERS', mine)) do
  local score = redis.call('ZSCORE', k.active, id)
  if score then
    held[#held + 1] = {tonumber(score), id}
  else
    redis.call('SREM', mine, id)  -- ended without telling this set (a damaged key)
  end
end
table.sort(held, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
for _, h in ipairs(held) do
  local id = h[2]
  local jk = PREFIX .. id
  local f = jmget(jk, 'worker', 'token')
  if not f then
    deactivate(id, worker)
    quarantine(id, job_problem(id) or {'unreadable', 'type'}, now)
  elseif f[1] == worker and not keep[f[2] or ''] then
    if give_back(id, worker, ARGV[2] == '1', now) then out[#out + 1] = id end
  elseif f[1] ~= worker then
    redis.call('SREM', mine, id)  -- another worker holds it now
  end
end
-- Hand-offs not yet popped were requeued above (their tokens are not kept):
-- drop them from the inbox, or the worker could start a job it gave back.
-- And no more hand-offs to this worker id.
redis.call('DEL', inbox_key(worker))
for _, member in ipairs(redis.call('ZRANGE', k.idle, 0, -1)) do
  if string.sub(member, (string.find(member, '|', 1, true) or 0) + 1) == worker then
    redis.call('ZREM', k.idle, member)
  end
end
if #ARGV == 2 then
  redis.call('DEL', mine)
  redis.call('SREM', k.workers, worker)
end
if #out > 0 then wake() end
return out
