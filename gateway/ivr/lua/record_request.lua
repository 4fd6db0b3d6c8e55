-- Record a voice request taken from the stream as a reminder waiting for its call.
-- KEYS[1] voice-reminder:{<id>} hash, KEYS[2] voice-due sorted set.
-- ARGV: id, to, text, not_before, due_at, now, retention.
-- Guarantees: a request seen again (stream replay) changes nothing; returns 1 when recorded.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'to', ARGV[2], 'text', ARGV[3], 'not_before', ARGV[4], 'due_at', ARGV[5],
  'received_at', ARGV[6], 'attempts', '0', 'state', 'waiting')
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
