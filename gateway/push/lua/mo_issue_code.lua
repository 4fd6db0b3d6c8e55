-- Issue the code of a two-step SMS cancellation (QXYY <booking no>).
-- KEYS[1] mo-cancel:<phone> hash.  ARGV: code, booking number, expires_at, mo id, ttl ms
-- Returns the code in force: a replay of the same QXYY gets the code it issued before.
local held = redis.call('HMGET', KEYS[1], 'issued_by', 'code', 'booking_no')
if held[1] == ARGV[4] and held[2] and held[3] == ARGV[2] then
  return held[2]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'code', ARGV[1], 'booking_no', ARGV[2], 'expires_at', ARGV[3],
           'attempts', 0, 'issued_by', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return ARGV[1]
