-- Count one failed-or-pending identity check on one counter (gateway/ivr/attempts.py):
-- INCR, and start the counter's fixed window on the first one (also repairs a counter
-- that lost its TTL).  One script: a crash between INCR and EXPIRE cannot leave a counter
-- that never expires.
-- KEYS[1] the counter (ivr-attempts:<phone>, ivr-attempts:<phone>:<target>,
-- ivr-attempts-booking:<booking_no> or ivr-attempts-global).  ARGV[1] window seconds.
-- Returns the count.
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
