-- time.lua: Redis's clock, read by the fleet clock (gateway/fleet/clock.py).
--
-- KEYS[1]  12123:members, never read: on a Cluster it picks the node that answers, so
--          that every gateway process reads the same master's clock (a plain TIME goes
--          to whichever node the client picks).
-- KEYS[2]  optional: {12123:members}:clock-step (same slot), set by a process that saw
--          Redis's clock step forward, for as long as take-overs of leases are held.
--
-- Returns {seconds, microseconds} of TIME, then with KEYS[2] the marker's PTTL in ms
-- (-2 when there is none).
local now = redis.call('TIME')
if KEYS[2] then
  return {now[1], now[2], redis.call('PTTL', KEYS[2])}
end
return now
