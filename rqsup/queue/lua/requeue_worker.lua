--[[ requeue_worker: give back the active jobs a worker holds but no longer runs.
Used after a claim whose reply was lost (the worker never learnt the jobs) and
by a restarted supervisor for the jobs of its previous incarnation.
KEYS: the standard queue keys (common.lua).
ARGV: [1] worker id, [2] count as a stall (0/1), then tokens still running
      (jobs holding one of these are left alone)
Returns: the requeued ids.
Events: requeued {id, worker}.
]]
--@include common
local worker = ARGV[1]
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', k.active, 0, -1)) do
  local jk = PREFIX .. id
  local f = redis.call('HMGET', jk, 'worker', 'token')
  if f[1] == worker and not keep[f[2] or ''] then
    redis.call('ZREM', k.active, id)
    redis.call('HDEL', jk, 'token')
    if ARGV[2] == '1' then redis.call('HINCRBY', jk, 'stalled_count', 1) end
    push_ready(id, job_priority(id), true)
    emit('event', 'requeued', 'id', id, 'worker', worker)
    out[#out + 1] = id
  end
end
-- Hand-offs not yet popped were requeued above (their tokens are not kept):
-- drop them from the inbox, or the worker could start a job it gave back.
redis.call('DEL', inbox_key(worker))
if #out > 0 then wake() end
return out
