-- The cancellation SMS is queued: mark the booking notified, drop it from cancel-unnotified.
-- KEYS[1] booking hash, KEYS[2] the plan's cancel-unnotified set (one hash tag).
-- ARGV[1] booking number.  HGET first: never recreate a booking deleted meanwhile.
if redis.call('HGET', KEYS[1], 'notified') == '0' then
  redis.call('HSET', KEYS[1], 'notified', '1')
  redis.call('HDEL', KEYS[1], 'notify_claim_until')
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
