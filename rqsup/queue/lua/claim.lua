--[[ claim: promote due delayed jobs, then move up to N ready jobs to active.
Order: wait (FIFO; LIFO jobs and requeued stalls sit at the pop end), then
prioritized (lowest priority number first). Nothing is claimed while paused.
Jobs already handed to this worker (its inbox) come first.
Each claim gets a fresh fencing token (INCR fence) and a lease: the job's
score in `active` is its lease deadline.
KEYS: the standard queue keys (common.lua).
ARGV: [1] N, [2] worker id, [3] lease_ms, [4] idle_ms (optional; > 0: when
      fewer than N jobs are claimed, register the worker as idle for that long
      so an add can hand it a job directly; see includes/claim.lua)
Returns: {next delayed job due in ms (-1: none), {id, token, job hash as a flat list}, ...}
Events: waiting {id, prev=delayed} per promoted job; active {id} per claim;
        for a damaged job (quarantine, common.lua): failed {error_type=
        MalformedJob} or malformed {id, reason}.
]]
--@include common
--@include claim
--@include flow
return claim_jobs(tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), now_ms(),
  tonumber(ARGV[4]) or 0)
