--[[ requeue_incarnations: a restarted supervisor gives back, at once, the jobs
its previous incarnations left active (instead of waiting for their leases).
Worker ids of a supervisor are "<name>@<incarnation>..." (rqsup.supervisor.app);
the caller has made sure no other incarnation of that name is alive.
KEYS: the standard queue keys (common.lua).
ARGV: [1] worker id prefix ("<name>@"), [2] a worker id prefix to spare (this
      incarnation's, '' for none)
Returns: the requeued ids.
Events: requeued {id, worker}.
]]
--@include common
local prefix, spare = ARGV[1], ARGV[2]
local out = {}
for _, id in ipairs(redis.call('ZRANGE', k.active, 0, -1)) do
  local jk = PREFIX .. id
  local worker = redis.call('HGET', jk, 'worker') or ''
  if string.sub(worker, 1, #prefix) == prefix
      and (spare == '' or string.sub(worker, 1, #spare) ~= spare) then
    redis.call('ZREM', k.active, id)
    redis.call('HDEL', jk, 'token')
    push_ready(id, job_priority(id), true)
    emit('event', 'requeued', 'id', id, 'worker', worker)
    out[#out + 1] = id
  end
end
-- Registrations for hand-offs of the old incarnations are stale too.
for _, member in ipairs(redis.call('ZRANGE', k.idle, 0, -1)) do
  local w = string.sub(member, (string.find(member, '|', 1, true) or 0) + 1)
  if string.sub(w, 1, #prefix) == prefix and (spare == '' or string.sub(w, 1, #spare) ~= spare) then
    redis.call('ZREM', k.idle, member)
  end
end
if #out > 0 then wake() end
return out
