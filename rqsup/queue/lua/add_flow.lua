--[[ add_flow: create a flow (a parent and its children, nested, in one or
more queues of one prefix) atomically. Parents go to waiting-children with
their deps sets filled; leaves go to wait, prioritized or delayed as add.lua
puts them (no hand-off). See includes/flow.lua for the layout.
KEYS: the standard queue keys (common.lua) of the root's queue; the jobs'
      keys are built from the queue bases in ARGV (one Redis slot on Cluster).
ARGV: [1] number of queue bases Qn, then Qn bases "<prefix>:{<queue>}", then
      the number of jobs N, then 12 values per job in pre-order: queue index
      (1-based), custom id ('' = next auto id of its queue), name, data (JSON),
      opts (JSON), delay_ms, priority, lifo (0/1), attempts, parent index (0 =
      the root), failure policy (fail | ignore | remove; '' for the root),
      is a parent (0/1)
Returns: {0, id per job in ARGV order} | {1, index of the first job whose
  custom id exists} (nothing written).
Events: added {id, name, state} per job, in its queue (state
        waiting-children for a parent).
]]
--@include common
--@include flow
return create_flow(1, nil, now_ms())
