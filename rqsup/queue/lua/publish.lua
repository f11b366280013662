--[[ publish: add a custom event to the queue's stream (BullMQ's publishEvent).
KEYS: the standard queue keys (common.lua).
ARGV: [1] event name, then field, value pairs
Returns: the event's stream id.
Events: <name> {fields...}, capped like every event (meta max_events).
]]
--@include common
return emit('event', unpack(ARGV))
