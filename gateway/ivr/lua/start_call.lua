-- Start one call of a due reminder: take it from voice-due, count the attempt, open the call
-- under this process's lease.
-- KEYS[1] voice-due, KEYS[2] voice-reminder of <id>, KEYS[3] call:<ActionID>,
-- KEYS[4] voice-calls-open (all of the notification's partition).
-- ARGV: id, attempt, action_id, now, retention, owner (the process), lease_until.
-- Guarantees: only the attempt after the recorded one starts (returns 1), so two processes
-- never originate the same attempt; 0 when the reminder is no longer due or moved on.
-- voice-calls-open is scored by the end of the owner's lease (take_over_calls.lua).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
if attempts + 1 ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'attempts', ARGV[2], 'state', 'calling', 'action_id', ARGV[3])
redis.call('HSET', KEYS[3], 'notification_id', ARGV[1], 'attempt', ARGV[2], 'state', 'originating',
  'originating_at', ARGV[4], 'reported', '0', 'owner', ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[3])
return 1
