--[[ requeue_incarnations: a restarted supervisor gives back, at once, the jobs
its previous incarnations left active (instead of waiting for their leases).
Worker ids of a supervisor are "<name>@<incarnation>..." (rqsup.supervisor.app);
the caller has made sure no other incarnation of that name is alive. The
workers are found in k.workers, their jobs in their worker-jobs sets.
KEYS: the standard queue keys (common.lua).
ARGV: [1] worker id prefix ("<name>@"), [2] a worker id prefix to spare (this
      incarnation's, '' for none)
Returns: the requeued ids.
Events: requeued {id, worker}; a damaged job is quarantined (common.lua).
]]
--@include common
--@include flow
local prefix, spare = ARGV[1], ARGV[2]
local function ours(w)
  return string.sub(w, 1, #prefix) == prefix and (spare == '' or string.sub(w, 1, #spare) ~= spare)
end
local now = now_ms()
local out = {}
for _, worker in ipairs(redis.call('SMEMBERS', k.workers)) do
  local mine = P.worker_jobs .. worker
  if ours(worker) then
    for _, id in ipairs(redis.call('SMEMBERS', mine)) do
      local jk = PREFIX .. id
      if redis.call('ZSCORE', k.active, id) and (jget(jk, 'worker') or worker) == worker
          and give_back(id, worker, false, now) then
        out[#out + 1] = id
      end
    end
    redis.call('DEL', mine, inbox_key(worker))
    redis.call('SREM', k.workers, worker)
  elseif redis.call('EXISTS', mine) == 0 then
    redis.call('SREM', k.workers, worker)  -- holds nothing: forget it
  end
end
-- Registrations for hand-offs of the old incarnations are stale too.
for _, member in ipairs(redis.call('ZRANGE', k.idle, 0, -1)) do
  if ours(string.sub(member, (string.find(member, '|', 1, true) or 0) + 1)) then
    redis.call('ZREM', k.idle, member)
  end
end
if #out > 0 then wake() end
return out
