-- Record a call's end and what follows: a retry (due again at retry_at) or done.
-- KEYS[1] call:<ActionID>, KEYS[2] voice-reminder of <id>, KEYS[3] voice-due (one partition).
-- ARGV: outcome, now, retention, retry_at (0: final), id, owner, then field/value pairs for
-- the call hash.
-- Guarantees: only the process that holds the call's lease records its end (returns 1); a
-- process whose call another took over after its lease ran out gets 0 and reports nothing.
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and owner ~= ARGV[6] then return 0 end
local args = {'HSET', KEYS[1], 'state', 'finished', 'outcome', ARGV[1], 'finished_at', ARGV[2]}
for i = 7, #ARGV do args[#args + 1] = ARGV[i] end
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
