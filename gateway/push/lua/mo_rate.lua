-- A sender's MO rate: fixed one-minute windows by the gateway's clock (tests move it;
-- the Redis TTL only collects garbage).
-- KEYS[1] mo-rate:<phone> hash.  ARGV: now, limit, window seconds, ignore seconds
-- Returns 0 answer, 1 answer once with the flood text (limit just passed), 2 ignore.
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'start', 'count', 'ignore_until')
local ignore_until = tonumber(h[3])
if ignore_until and now < ignore_until then
  return 2
end
local start, count = tonumber(h[1]), tonumber(h[2]) or 0
if ignore_until or not start or now >= start + tonumber(ARGV[3]) then
  start, count = now, 0
end
count = count + 1
if count > tonumber(ARGV[2]) then
  ignore_until = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'start', start, 'count', count, 'ignore_until', ignore_until)
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000) + 60000)
  return 1
end
redis.call('HSET', KEYS[1], 'start', start, 'count', count)
redis.call('HDEL', KEYS[1], 'ignore_until')
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 60000)
return 0
