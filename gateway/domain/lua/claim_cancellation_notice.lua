-- Claim the owed cancellation SMS of a booking (repair sweep), unless another caller holds
-- a live claim.  Reply as cancel_booking.lua.
-- KEYS[1] booking hash, KEYS[2] exam plan hash, KEYS[3] the plan's cancel-unnotified set
-- (one hash tag).  ARGV[1] now (Unix seconds), ARGV[2] claim expiry, ARGV[3] booking number
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'cancelled' or redis.call('HGET', KEYS[1], 'notified') ~= '0' then
  -- Deleted, notified, or changed by a core system since: nothing is owed any more.
  redis.call('SREM', KEYS[3], ARGV[3])
  if not status then
    return {'NOT_FOUND', 0, '', {}}
  end
  return {status, 0, '', {}}
end
local claimed = 0
local held = tonumber(redis.call('HGET', KEYS[1], 'notify_claim_until') or '0') or 0
if held <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'notify_claim_until', ARGV[2])
  claimed = 1
end
local deadline = redis.call('HGET', KEYS[2], 'cancel_deadline') or ''
return {status, claimed, deadline, redis.call('HGETALL', KEYS[1])}
