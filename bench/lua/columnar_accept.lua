-- Accept a batch: idempotent per id; record, first state, lane entry, retention and event
-- together.
-- KEYS: 1 body, 2 state, 3 lane, 4 lane sequence, 5 expiry, 6 events.
-- ARGV[1] (JSON): now, events MAXLEN, n, then per request: id, type, expires_at, quiet
-- (0/1), the number's last 8 digits, flags, body, when its retention ends (the expiry
-- score: max(now, expires_at) + retention, printed by the caller); ARGV[2] events mode.
-- include: columnar_record.lua
local A = cjson.decode(ARGV[1])
local NOW, MAXLEN, n = A[1], A[2], tonumber(A[3])
local BODY, STATE, LANE, SEQ, EXPIRY, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ids = {}
for k = 1, n do ids[k] = A[4 + (k - 1) * 8] end
local known = redis.call('HMGET', STATE, unpack(ids))
local seq = redis.call('INCRBY', SEQ, n) - n
local bodies, states, lane, expiry, out, seen = {}, {}, {}, {}, {}, {}
for k = 1, n do
  local j = 4 + (k - 1) * 8
  local id, ntype, exp, quiet, tail, flags, body = A[j], A[j + 1], A[j + 2], A[j + 3], A[j + 4], A[j + 5], A[j + 6]
  if known[k] or seen[id] then
    out[#out + 1] = id
  else
    seen[id] = true
    bodies[#bodies + 1] = id; bodies[#bodies + 1] = body
    local r = {'queued', ntype, 'normal', exp, quiet, tail, flags, '0', '', '', '', '', '', '', '',
      'accepted=' .. NOW}
    stamp(r, 'queued', NOW)
    states[#states + 1] = id; states[#states + 1] = encode(r)
    lane[#lane + 1] = seq + k; lane[#lane + 1] = id
    expiry[#expiry + 1] = A[j + 7]
    expiry[#expiry + 1] = id
    emit(EVENTS, MAXLEN, NOW, 'queued', id, ntype, 'priority', 'normal')
  end
end
if #states > 0 then
  chunked(1000, bodies, 'HSET', BODY)
  chunked(1000, states, 'HSET', STATE)
  chunked(1000, lane, 'ZADD', LANE)
  chunked(1000, expiry, 'ZADD', EXPIRY)
end
return out
