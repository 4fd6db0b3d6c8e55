-- Take over open calls whose owner's lease ran out (the process died, or stopped and gave
-- them up), or that this process itself owned in a previous run.
-- KEYS[1] voice-calls-open, KEYS[2..n] call:<ActionID> of the ActionIDs in ARGV (one
-- partition; chosen by the caller with ZRANGEBYSCORE, those renewed meanwhile are skipped).
-- ARGV: owner, now, lease_until, then the ActionIDs (in the order of KEYS[2..n]).
-- Returns the ActionIDs taken: their lease is now this process's.  A call whose hash is
-- gone (expired) leaves voice-calls-open.
local taken = {}
for i = 4, #ARGV do
  local action_id = ARGV[i]
  local key = KEYS[i - 2]
  local score = redis.call('ZSCORE', KEYS[1], action_id)
  if score then
    if redis.call('EXISTS', key) == 0 then
      redis.call('ZREM', KEYS[1], action_id)
    else
      local owner = redis.call('HGET', key, 'owner')
      if tonumber(score) <= tonumber(ARGV[2]) or owner == ARGV[1] then
        redis.call('HSET', key, 'owner', ARGV[1])
        redis.call('ZADD', KEYS[1], ARGV[3], action_id)
        taken[#taken + 1] = action_id
      end
    end
  end
end
return taken
