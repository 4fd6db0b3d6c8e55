-- Renew (or, with lease_until 0, give up) this process's leases on its open calls.
-- KEYS[1] voice-calls-open, KEYS[2..n] call:<ActionID> of the ActionIDs in ARGV (one partition).
-- ARGV: owner, lease_until, then the ActionIDs (in the order of KEYS[2..n]).
-- Returns the ActionIDs this process no longer holds (another took them over, or they
-- closed): the caller stops following those.
local lost = {}
for i = 3, #ARGV do
  local action_id = ARGV[i]
  local owner = redis.call('HGET', KEYS[i - 1], 'owner')
  if (owner and owner ~= '' and owner ~= ARGV[1]) or not redis.call('ZSCORE', KEYS[1], action_id) then
    lost[#lost + 1] = action_id
  else
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], action_id)
  end
end
return lost
