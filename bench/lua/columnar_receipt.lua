-- Apply a batch of receipts whose notifications the caller found in the index (one
-- HMGET of it): a receipt for a final state changes nothing but a late note; one naming
-- another number is refused; DELIVRD of every part that asked ends delivered.
-- KEYS: 1 state, 2 in-flight, 3 awaiting-receipt, 4 events.
-- ARGV[1] (JSON): now, events MAXLEN, n, then per op: id, part, stat, err, tails;
-- ARGV[2]: the events mode (all, final, off).
-- Returns the op numbers refused (another number).
-- include: columnar_record.lua
local A = cjson.decode(ARGV[1])
local NOW, MAXLEN, n = A[1], A[2], tonumber(A[3])
local STATE, INFLIGHT, AWAITING, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = {}
for k = 1, n do ids[k] = A[4 + (k - 1) * 5] end
local recs = redis.call('HMGET', STATE, unpack(ids))
local states, finals, refused = {}, {}, {}
for k = 1, n do
  local j = 4 + (k - 1) * 5
  local id, part, stat, err, tails = A[j], tonumber(A[j + 1]), A[j + 2], A[j + 3], A[j + 4]
  local s = recs[k]
  local r = s and decode(s)
  if r and tails ~= '' and #r[F.to_tail] > 0 and
      not string.find(' ' .. tails .. ' ', ' ' .. r[F.to_tail] .. ' ', 1, true) then
    refused[#refused + 1] = k
  elseif r and not FINAL[r[F.state]] then
    local np = tonumber(r[F.receipt_parts]) or tonumber(r[F.parts]) or 1
    local got = split_commas(r[F.receipts])
    for q = #got + 1, part do got[q] = '' end
    got[part + 1] = stat
    r[F.receipts] = table.concat(got, ',')
    local all = true
    for q = 1, np do if got[q] ~= 'DELIVRD' then all = false end end
    if stat == 'DELIVRD' and all then
      stamp(r, 'delivered', NOW)
      finals[#finals + 1] = id
      emit(EVENTS, MAXLEN, NOW, 'delivered', id, r[F.type], 'parts', tostring(np))
    elseif stat ~= 'DELIVRD' and stat ~= 'ENROUTE' and stat ~= 'ACCEPTD' then
      stamp(r, 'undeliverable', NOW)
      finals[#finals + 1] = id
      emit(EVENTS, MAXLEN, NOW, 'undeliverable', id, r[F.type], 'receipt_state', stat, 'error_code', err)
    end
    states[#states + 1] = id; states[#states + 1] = encode(r)
  end
end
if #states > 0 then chunked(1000, states, 'HSET', STATE) end
if #finals > 0 then
  chunked(1000, finals, 'ZREM', AWAITING)
  chunked(1000, finals, 'ZREM', INFLIGHT)
end
return refused
