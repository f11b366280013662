#!lua flags=allow-oom
--[[ hold_name: a supervisor's name, held by one incarnation at a time.
The key holds the holder's heartbeat (JSON with its "incarnation"), with a TTL.
KEYS: [1] the supervisor key (rqsup.keys.supervisor_key)
ARGV: [1] op: 'take' (only if free, or if the value is still ARGV[4]: a dead
      holder's, replaced by compare-and-set), 'beat' (only while this
      incarnation holds it, or it is free), 'release' (only while this
      incarnation holds it), [2] this incarnation, [3] the new value, [4] ttl_ms
      ('take': the value expected, '' for none; 'beat': ttl_ms), [5] ttl_ms
      ('take')
Returns: 1 done; 0 refused, with the current value: {0, value}.
Events: none.
Runs while Redis is out of memory (allow-oom): the heartbeat replaces a value
of the same size, and without it the supervisor would lose its name.
]]
local key, op, inc = KEYS[1], ARGV[1], ARGV[2]
local cur = redis.call('GET', key)
local function holder(v)
  local ok, t = pcall(cjson.decode, v)
  if ok and type(t) == 'table' then return t.incarnation end
  return nil
end
if op == 'take' then
  if cur and cur ~= ARGV[4] then return {0, cur} end
  redis.call('SET', key, ARGV[3], 'PX', ARGV[5])
  return {1, ''}
elseif op == 'beat' then
  if cur and holder(cur) ~= inc then return {0, cur} end
  redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
  return {1, ''}
end
if cur and holder(cur) == inc then redis.call('DEL', key) end
return {1, ''}
