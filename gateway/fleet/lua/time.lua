-- time.lua: Redis's clock, read by the fleet clock (gateway/fleet/clock.py).
--
-- KEYS[1]  12123:members, never read: on a Cluster it picks the node that answers, so
--          that every gateway process reads the same master's clock (a plain TIME goes
--          to whichever node the client picks).
--
-- Returns TIME: {seconds, microseconds}.
return redis.call('TIME')
