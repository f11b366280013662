--[[ add_children: a running job adds children to itself (step jobs); it
then usually moves to waiting-children (move_to_waiting_children.lua).
KEYS: the standard queue keys (common.lua) of the parent's queue.
ARGV: [1] parent id, [2] its token, [3] sequence number of this call for the
      token (a resend of a call already applied changes nothing), then the
      flow as add_flow.lua's ARGV, whose jobs with parent index 0 become
      children of the parent.
Returns: 0 added (or already added by this call), 1 a custom id exists
  (nothing written), -1 job not found, -2 lease lost, -3 not active, -6
  malformed (quarantined, common.lua).
Events: added {id, name, state} per child, in its queue.
]]
--@include common
--@include flow
local id, token, seq = ARGV[1], ARGV[2], tonumber(ARGV[3])
local held = checked_lease(id, token, nil, now_ms())
if held ~= 1 then return held end
local jk = PREFIX .. id
local last = redis.call('HGET', jk, 'children_seq')
if last then
  local sep = string.find(last, ':', 1, true)
  if string.sub(last, 1, sep - 1) == token and tonumber(string.sub(last, sep + 1)) >= seq then
    return 0
  end
end
local out = create_flow(4, jk, now_ms())
if out[1] ~= 0 then return out[1] end
redis.call('HSET', jk, 'has_children', 1, 'children_seq', token .. ':' .. seq)
return 0
