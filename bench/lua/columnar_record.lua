-- A columnar notification record (bench/record_layouts.py; not the gateway's ledger).
-- Per partition, three hashes instead of a hash per notification:
--   body   id -> the request as the gateway accepted it (JSON, written once, opaque here)
--   state  id -> the mutable record: fixed fields joined by TAB (below), each state's
--             time appended to `history` as in the hash's <state>_at fields
--   index  carrier NUL canonical message id -> '<id> <part>'
-- and a sorted set `expiry` (id scored by when its retention ends), swept in batches
-- instead of an EXPIRE per key.  Every write of a batch to one key is one variadic
-- command: a redis.call costs more than the field it carries.
-- Included first by each script of this directory.
local F = {state = 1, type = 2, priority = 3, expires_at = 4, quiet = 5, to_tail = 6, flags = 7,
  attempts = 8, claim = 9, carrier = 10, parts = 11, receipt_parts = 12, message_ids = 13,
  indexed = 14, receipts = 15, history = 16}
local NFIELDS = 16
local FINAL = {delivered = true, undeliverable = true, unconfirmed = true, expired = true, failed = true,
  rejected = true}

-- One pattern match (a C call) instead of a find and a sub per field.
local RECORD_PATTERN = '^' .. string.rep('([^\t]*)\t', NFIELDS - 1) .. '(.*)$'
local function decode(s) return {string.match(s, RECORD_PATTERN)} end

-- The receipts of parts so far: 'DELIVRD,,DELIVRD' (part 1 first, '' none yet).
local function split_commas(s)
  local t, start = {}, 1
  if s == '' then return t end
  while true do
    local c = string.find(s, ',', start, true)
    if not c then t[#t + 1] = string.sub(s, start); return t end
    t[#t + 1] = string.sub(s, start, c - 1)
    start = c + 1
  end
end

local function encode(r) return table.concat(r, '\t', 1, NFIELDS) end

local function stamp(r, state, now_s)
  local name = state == 'submitting' and 'submit_started' or state
  r[F.state] = state
  r[F.history] = r[F.history] .. ' ' .. name .. '=' .. now_s
end

-- The events stream, as the gateway writes it: one entry per state change with
-- push.events all, per final state with final, none with off (ARGV[2] of each script that emits),
-- trimmed by a script's first XADD.
local EVENTS_MODE = ARGV[2]
local trimmed = false
local function emit(events, maxlen, now_s, kind, id, ntype, ...)
  if EVENTS_MODE ~= 'all' and (EVENTS_MODE == 'off' or not FINAL[kind]) then return end
  if trimmed then
    redis.call('XADD', events, '*', 'type', 'notification.' .. kind, 'id', id, 'at', now_s,
      'notification_type', ntype, ...)
  else
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'notification.' .. kind, 'id', id,
      'at', now_s, 'notification_type', ntype, ...)
    trimmed = true
  end
end

local function chunked(step, items, ...)
  local head = {...}
  for s = 1, #items, step do
    local args = {unpack(head)}
    for k = s, math.min(s + step - 1, #items) do args[#args + 1] = items[k] end
    redis.call(unpack(args))
  end
end
