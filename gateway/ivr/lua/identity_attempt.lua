-- Take one identity-check attempt for a caller number: INCR, and start the one-hour window
-- on the first failure (also repairs a counter that lost its TTL).  One script: a crash
-- between INCR and EXPIRE cannot leave a counter that never expires.
-- KEYS[1] ivr-attempts:<phone>.  ARGV[1] window seconds.  Returns the count.
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
