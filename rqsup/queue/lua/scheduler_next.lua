--[[ scheduler_next: advance a scheduler whose pending run has started.
Compare-and-set: only when the scheduler still exists, its `rev` and `next`
are the ones the caller computed from, and its pending job has started (or is
gone), is the next run added. Two supervisors advancing the same run: one
wins, the other gets -6. So a scheduler never has two runs waiting.
KEYS: the standard queue keys (common.lua), then the schedulers zset and the
      scheduler hash prefix (last two; includes/scheduler.lua).
ARGV: [1] scheduler id, [2] expected rev, [3] expected next (ms, the run
      advanced from), [4] next run (ms) or '' for none, [5] why there is
      none ('end')
Returns: {0, new job id} | {1, done reason ('limit', 'end')} |
         {-1, ''} no such scheduler | {-4, pending job id} it has not started |
         {-6, current next} stale (advanced or redefined meanwhile)
Events: added {id, name, state} for the new run.
]]
--@include common
--@include scheduler
local sid = ARGV[1]
local hk = sk.prefix .. sid
local h = redis.call('HMGET', hk, 'rev', 'next', 'job')
if not h[1] then return {-1, ''} end
if h[1] ~= ARGV[2] or h[2] ~= ARGV[3] or h[2] == '' then return {-6, h[2] or ''} end
if run_started(h[3]) == nil then return {-4, h[3]} end
redis.call('HSET', hk, 'last', h[2], 'last_job', h[3] or '')  -- the run that came due
local r = schedule_run(sid, hk, ARGV[4], ARGV[5], now_ms())
if r[1] == '' then return {1, r[2]} end
return {0, r[1]}
