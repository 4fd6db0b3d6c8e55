-- Check the code of a two-step SMS cancellation (QR <code>): at most ARGV[3] wrong codes.
-- KEYS[1] mo-cancel:<phone> hash.  ARGV: code, now, max attempts, mo id
-- Returns {status, booking number or attempts left}.
local h = redis.call('HMGET', KEYS[1], 'code', 'booking_no', 'expires_at', 'attempts',
                     'confirmed_by')
if not h[1] then
  return {'NONE', ''}
end
if h[5] then
  -- A used code: valid again only for the MO that used it (a replay after a crash).
  if h[5] == ARGV[4] then return {'OK', h[2]} end
  return {'NONE', ''}
end
if tonumber(ARGV[2]) >= tonumber(h[3]) then
  redis.call('DEL', KEYS[1])
  return {'EXPIRED', ''}
end
if h[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'confirmed_by', ARGV[4])
  return {'OK', h[2]}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return {'LOCKED', ''}
end
return {'WRONG', tostring(tonumber(ARGV[3]) - attempts)}
