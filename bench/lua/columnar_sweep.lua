-- Delete the records whose retention ended: their body, state, index entries and expiry
-- entry (what EXPIRE does per key in the gateway's own record).
-- KEYS: 1 body, 2 state, 3 index, 4 expiry.
-- ARGV: up to (score), at most how many.
-- Returns how many were deleted.
-- include: columnar_record.lua
local BODY, STATE, INDEX, EXPIRY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
local recs = redis.call('HMGET', STATE, unpack(ids))
local fields = {}
for k = 1, #ids do
  if recs[k] then
    local r = decode(recs[k])
    for m in string.gmatch(r[F.indexed], '%S+') do fields[#fields + 1] = r[F.carrier] .. '\0' .. m end
  end
end
chunked(1000, ids, 'HDEL', BODY)
chunked(1000, ids, 'HDEL', STATE)
if #fields > 0 then chunked(1000, fields, 'HDEL', INDEX) end
chunked(1000, ids, 'ZREM', EXPIRY)
return #ids
