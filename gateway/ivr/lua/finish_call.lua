-- Record a call's end and what follows: a retry (due again at retry_at) or done.
-- KEYS[1] call:<ActionID>, KEYS[2] voice-reminder:{<id>}, KEYS[3] voice-due.
-- ARGV: outcome, now, retention, retry_at (0: final), id, then field/value pairs for the
-- call hash.
local args = {'HSET', KEYS[1], 'state', 'finished', 'outcome', ARGV[1], 'finished_at', ARGV[2]}
for i = 6, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[2], 'state', 'waiting', 'due_at', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
else
  redis.call('HSET', KEYS[2], 'state', 'done', 'outcome', ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
