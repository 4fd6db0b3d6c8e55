-- include: call_chunked.lua
-- The members of a sorted set scored at or before `upto` (at most `limit`), removed from it:
-- what the scheduled, in-flight and awaiting-receipt sweeps each take.
local function take_due(key, upto, limit)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', upto, 'LIMIT', 0, limit)
  call_chunked(1000, ids, 'ZREM', key)
  return ids
end
