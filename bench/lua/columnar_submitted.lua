-- Record the carrier's acceptance of a batch's submits: submitted, the message ids, the
-- index entries of the parts that asked a receipt, awaiting its receipt, event.  An
-- outcome for a notification no longer submitting changes nothing.
-- KEYS: 1 state, 2 in-flight, 3 awaiting-receipt, 4 index, 5 early-receipts-parked, 6 events.
-- ARGV[1] (JSON): now, receipt due, events MAXLEN, n, then per op: id, carrier, parts np,
-- indexed parts nr, the np ids as sent, their np canonical forms;
-- ARGV[2]: the events mode (all, final, off).
-- Returns the index entries taken from another notification ('<field> <its entry>').
-- include: columnar_record.lua
local A = cjson.decode(ARGV[1])
local NOW, DUE, MAXLEN, n = A[1], A[2], A[3], tonumber(A[4])
local STATE, INFLIGHT, AWAITING, INDEX, EARLY, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ops, ids = {}, {}
local j = 5
for k = 1, n do
  local np = tonumber(A[j + 2])
  ops[k] = j
  ids[k] = A[j]
  j = j + 4 + 2 * np
end
local recs = redis.call('HMGET', STATE, unpack(ids))
local states, done, awaiting, fields, entries = {}, {}, {}, {}, {}
for k = 1, n do
  local s = recs[k]
  local r = s and decode(s)
  if r and (r[F.state] == 'submitting' or r[F.state] == 'queued' or r[F.state] == 'scheduled') then
    local o = ops[k]
    local id, carrier, np, nr = A[o], A[o + 1], tonumber(A[o + 2]), tonumber(A[o + 3])
    local sent, indexed = {}, {}
    for p = 1, np do sent[p] = A[o + 3 + p] end
    for p = 1, nr do
      local field = carrier .. '\0' .. A[o + 3 + np + p]
      indexed[p] = A[o + 3 + np + p]
      fields[#fields + 1] = field
      entries[#entries + 1] = field; entries[#entries + 1] = id .. ' ' .. tostring(p - 1)
    end
    r[F.carrier], r[F.parts], r[F.receipt_parts] = carrier, tostring(np), tostring(nr)
    r[F.message_ids], r[F.indexed] = table.concat(sent, ' '), table.concat(indexed, ' ')
    stamp(r, 'submitted', NOW)
    states[#states + 1] = id; states[#states + 1] = encode(r)
    done[#done + 1] = id
    if nr > 0 then awaiting[#awaiting + 1] = DUE; awaiting[#awaiting + 1] = id end
    emit(EVENTS, MAXLEN, NOW, 'submitted', id, r[F.type], 'carrier', carrier, 'parts', tostring(np))
  end
end
local displaced = {}
if #fields > 0 then
  local before = redis.call('HMGET', INDEX, unpack(fields))
  for k = 1, #fields do
    local e = before[k]
    if e then
      local owner = string.sub(e, 1, string.find(e, ' ', 1, true) - 1)
      if owner ~= string.sub(entries[2 * k], 1, #owner) then displaced[#displaced + 1] = fields[k] .. ' ' .. e end
    end
  end
  chunked(1000, entries, 'HSET', INDEX)
end
if #states > 0 then
  chunked(1000, states, 'HSET', STATE)
  chunked(1000, done, 'ZREM', INFLIGHT)
  if #awaiting > 0 then chunked(2000, awaiting, 'ZADD', AWAITING) end
end
-- receipts parked before their submit's ids: applied here when any may be (one EXISTS)
redis.call('EXISTS', EARLY)
return displaced
