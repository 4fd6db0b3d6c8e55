-- Claim the candidates (read by the caller with ZRANGE) still queued: submitting, leased
-- in the in-flight set, listed under the token; expired ones end expired.
-- KEYS: 1 body, 2 state, 3 lane, 4 in-flight, 5 claim list, 6 events.
-- ARGV[1] (JSON): now, lease seconds, token, events MAXLEN, n, candidate ids;
-- ARGV[2]: the events mode (all, final, off).
-- Returns {id, attempts, body}... of those claimed.
-- include: columnar_record.lua
local A = cjson.decode(ARGV[1])
local NOW, LEASE, TOKEN, MAXLEN, n = A[1], tonumber(A[2]), A[3], A[4], tonumber(A[5])
local BODY, STATE, LANE, INFLIGHT, CLAIMS, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(NOW)
if redis.call('EXISTS', CLAIMS) == 1 then return {'replay'} end
local cands = {unpack(A, 6, 5 + n)}
local scores = redis.call('ZMSCORE', LANE, unpack(cands))
local present = {}
for k = 1, n do if scores[k] then present[#present + 1] = cands[k] end end
if #present == 0 then return {} end
local recs = redis.call('HMGET', STATE, unpack(present))
local deadline = string.format('%.3f', now + LEASE)
local states, inflight, taken, attempts = {}, {}, {}, {}
for k, id in ipairs(present) do
  local s = recs[k]
  if s then
    local r = decode(s)
    if r[F.state] == 'queued' then
      local exp = tonumber(r[F.expires_at]) or 0
      if exp > 0 and exp <= now then
        stamp(r, 'expired', NOW)
        emit(EVENTS, MAXLEN, NOW, 'expired', id, r[F.type])
      else
        local a = tostring((tonumber(r[F.attempts]) or 0) + 1)
        r[F.attempts], r[F.claim] = a, TOKEN
        stamp(r, 'submitting', NOW)
        inflight[#inflight + 1] = deadline; inflight[#inflight + 1] = id
        taken[#taken + 1] = id; attempts[#attempts + 1] = a
        emit(EVENTS, MAXLEN, NOW, 'submitting', id, r[F.type], 'attempt', a)
      end
      states[#states + 1] = id; states[#states + 1] = encode(r)
    end
  end
end
chunked(1000, present, 'ZREM', LANE)
local out = {}
if #states > 0 then chunked(1000, states, 'HSET', STATE) end
if #taken > 0 then
  chunked(2000, inflight, 'ZADD', INFLIGHT)
  chunked(1000, taken, 'RPUSH', CLAIMS)
  redis.call('EXPIRE', CLAIMS, math.ceil(2 * LEASE))
  local bodies = redis.call('HMGET', BODY, unpack(taken))
  for k, id in ipairs(taken) do out[#out + 1] = {id, attempts[k], bodies[k]} end
end
return out
