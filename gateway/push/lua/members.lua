-- members.lua: heartbeat of one gateway process among those sharing the partitions.
--
-- KEYS[1]  the members sorted set (keys.partition_members, 12123:members): consumer name ->
--          expiry in Redis-clock milliseconds.  One key outside the partitions.
-- ARGV[1]  this process's consumer name.
-- ARGV[2]  heartbeat lease in milliseconds; 0: leave (a clean stop).
-- ARGV[3]  most members returned (a bound: the share is computed from this many at most).
--
-- Returns the live members' names (this one included unless it left), expired ones
-- removed first.  Redis TIME is the one clock of every host.
redis.replicate_commands()  -- TIME before a write (Redis 6; a no-op on Redis 7)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if lease > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  -- The key itself goes when its last member has: nothing is left after the fleet stops.
  redis.call('PEXPIRE', KEYS[1], lease)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
