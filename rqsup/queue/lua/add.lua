--[[ add: create jobs (one or a batch) in wait, prioritized or delayed.
KEYS: the standard queue keys (common.lua); uses id, meta, wait, prioritized,
      pc, delayed, marker, events, job prefix.
ARGV: [1] number of jobs N, then 8 values per job:
      custom id ('' = next auto id), name, data (JSON), opts (JSON),
      delay_ms, priority, lifo (0/1), attempts
Returns: per job {id, created (1, or 0 when the id existed), event id or ''}
A ready job added while nothing else is ready goes straight to a registered
idle worker when there is one (hand-off, includes/claim.lua): state 'active'.
Events: added {id, name, state}; duplicated {id} for an existing custom id;
        active {id} for a job handed off.
]]
--@include common
--@include claim
local now = now_ms()
local n = tonumber(ARGV[1])
redis.call('HSETNX', k.meta, 'version', '1')
local out = {}
local woken = false
for i = 0, n - 1 do
  local b = 2 + i * 8
  local id = ARGV[b]
  local created = 1
  if id == '' then
    id = tostring(redis.call('INCR', k.id))
  elseif redis.call('EXISTS', PREFIX .. id) == 1 then
    created = 0
  end
  if created == 1 then
    local taker = nil
    local delay = tonumber(ARGV[b + 4])
    local priority = tonumber(ARGV[b + 5])
    redis.call('HSET', PREFIX .. id, 'name', ARGV[b + 1], 'data', ARGV[b + 2],
      'opts', ARGV[b + 3], 'timestamp', now, 'delay', delay, 'priority', priority,
      'attempts', ARGV[b + 7], 'attempts_made', 0)
    local state
    if delay > 0 then
      redis.call('ZADD', k.delayed, now + delay, id)
      state = 'delayed'
    else
      if redis.call('LLEN', k.wait) == 0 and redis.call('ZCARD', k.prioritized) == 0 then
        taker = idle_worker(now)
      end
      if taker then
        state = 'active'
      else
        state = push_ready(id, priority, ARGV[b + 6] == '1')
      end
    end
    if not woken and state ~= 'active' then
      -- A delayed job wakes a worker too: it recomputes how long to block.
      wake()
      woken = true
    end
    out[#out + 1] = {id, 1, emit('event', 'added', 'id', id, 'name', ARGV[b + 1], 'state', state)}
    if taker then hand_off(id, taker, now) end
  else
    emit('event', 'duplicated', 'id', id)
    out[#out + 1] = {id, 0, ''}
  end
end
return out
