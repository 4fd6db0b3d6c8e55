-- Acknowledge intake entries that carried nothing to record (empty entries, or entries
-- of the shared stream whose notifications other partitions' scripts recorded), delete
-- them, and trim the stream as accept.lua does (entries kept behind one of these while it
-- was pending go now).
-- KEYS: 1 the intake stream.  ARGV: the consumer group, then the entry ids.
-- include: call_chunked.lua
-- include: trim_intake.lua
local group = ARGV[1]
local ids = {}
for j = 2, #ARGV do ids[#ids + 1] = ARGV[j] end
if #ids > 0 then
  call_chunked(1000, ids, 'XACK', KEYS[1], group)
  call_chunked(1000, ids, 'XDEL', KEYS[1])
end
trim_intake(KEYS[1], group)
return #ids
