-- Take one bulk reminder of a number's daily cap, in a partitioned pipeline (a number's
-- reminders span partitions, so the cap cannot be counted inside the accept script).
-- KEYS[1] freq-ids:<YYYYMMDD>:<phone>, a set of the notification ids counted that day.
-- ARGV: notification id, cap, TTL seconds.
-- Guarantees: idempotent per id (a replayed intake entry or a duplicate id counts once);
-- returns 1 when the id is within the cap (counted now or before), 0 when over it.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
