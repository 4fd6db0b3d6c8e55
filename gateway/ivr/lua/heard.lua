-- Mark a reminder heard or not, only if the reminder hash exists (never create a stray
-- hash for a call that has none, e.g. a test call to the notify script).
-- KEYS[1] voice-reminder:{<id>}.  ARGV: heard (1/0), heard_at, heard_uniqueid.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'heard', ARGV[1], 'heard_at', ARGV[2], 'heard_uniqueid', ARGV[3])
  return 1
end
return 0
