-- The push ledger's shared part: the argument header, key names, counters and the
-- functions every ledger script uses (transition, emit, lane_push, on_final,
-- apply_receipt, ...).  Included first by each script in this directory.
--
-- KEYS, every ledger script: 1-3 lanes high/normal/bulk, 4 scheduled, 5 in-flight,
--   6 dead letters, 7 events stream, 8 voice requests stream, 9 partner receipts,
--   10 lane sequence, 11 early-receipts-parked, 12 awaiting-receipt, 13 early-receipts
--   (the parked receipts, counted against push.early_receipts_max); then the keys the
--   call touches besides (NotificationLedger._run), each labelled in ARGV:
--   'n'..id a notification, 'm'..carrier..'\0'..message id its index entry,
--   'e'..carrier..'\0'..message id a parked receipt, 's' the intake stream, 'k' a claim
--   list, 'c'..n the n-th daily-cap counter.  A script asking for a key that was not
--   declared fails (declared()): nothing reaches Redis that Cluster could not route, and
--   during a slot migration the server sees every key (ASK/TRYAGAIN, not half the data).
--
-- ARGV[1] is one JSON array (redis-py packs each argument in Python, a third of the
-- intake's and the writer's CPU with thousands of them per batch; json.dumps and
-- cjson.decode do the same work in C).  Decoded, its elements are:
--   1 now (Unix seconds, %.3f), 2 retention seconds, 3 events MAXLEN, 4 SMS signature,
--   5 receipt timeout seconds, 6 events mode (push.events: all, final or off), 7 number of
--   labelled keys L, 8..7+L their labels (KEYS 14..13+L in order); the script's own
--   arguments from FIRST (8 + L) on.
-- include: call_chunked.lua
local ARGV = cjson.decode(ARGV[1])
local NOW = ARGV[1]
local now = tonumber(NOW)
local RETENTION_S = ARGV[2]
local RETENTION = tonumber(RETENTION_S)
local MAXLEN = ARGV[3]
local SIGNATURE = ARGV[4]
local RECEIPT_TIMEOUT = tonumber(ARGV[5])
local EVENTS_MODE = ARGV[6]
local LANE = {high = KEYS[1], normal = KEYS[2], bulk = KEYS[3]}
local SCHEDULED, INFLIGHT, DEAD, EVENTS = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local VOICE, PARTNER, SEQUENCE, EARLY_PARKED, AWAITING = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local EARLY_SET = KEYS[13]
local FIXED_KEYS = 13
local DECLARED = {}
do
  local labelled = tonumber(ARGV[7])
  for j = 1, labelled do DECLARED[ARGV[7 + j]] = KEYS[FIXED_KEYS + j] end
end
local FIRST = 8 + tonumber(ARGV[7])

-- The declared key with this label; a missing one is a bug in the caller.
local function declared(label)
  local key = DECLARED[label]
  if not key then error('ledger script: key not declared in KEYS: ' .. label) end
  return key
end
local counts = {}
local partner_final = {}
local FINAL = {delivered = true, undeliverable = true, unconfirmed = true, expired = true, failed = true,
  rejected = true}
local UNDELIVERABLE = {UNDELIV = true, EXPIRED = true, REJECTD = true, DELETED = true}
local RECEIPT_FINAL = {DELIVRD = true, UNDELIV = true, EXPIRED = true, REJECTD = true, DELETED = true}

-- Counts (parts, attempts) as strings, each printed once per script: tostring() of a
-- number is a sprintf each time, and a batch repeats the same few.
local INT = {}
local function int_s(n)
  local s = INT[n]
  if not s then
    s = tostring(n)
    if n ~= nil and n == n then INT[n] = s end  -- nil and NaN are no table keys
  end
  return s
end

local function nkey(id) return declared('n' .. id) end
local function msgkey(c, m) return declared('m' .. c .. '\0' .. m) end
local function earlykey(c, m) return declared('e' .. c .. '\0' .. m) end
local function count(what) counts[what] = (counts[what] or 0) + 1 end

-- Sorted-set adds and removals a script makes per notification are collected and sent
-- as one variadic ZADD / ZREM per key when the script ends (flush_sorted_sets): each
-- redis.call costs more than the member it carries.  Only for keys the script does not
-- read afterwards (lanes in accept and promote, the in-flight and awaiting-receipt sets in
-- claim and outcomes); adds go before removals, so a member both added and removed in one
-- script (a parked receipt applied as its submit is recorded) ends up removed.
local zadds, zrems = {}, {}
local function zadd_later(key, score, member)
  local t = zadds[key]
  if not t then t = {}; zadds[key] = t end
  t[#t + 1] = score; t[#t + 1] = member
end
local function zrem_later(key, member)
  local t = zrems[key]
  if not t then t = {}; zrems[key] = t end
  t[#t + 1] = member
end
local function flush_sorted_sets()
  for key, t in pairs(zadds) do call_chunked(2000, t, 'ZADD', key) end
  for key, t in pairs(zrems) do call_chunked(1000, t, 'ZREM', key) end
  zadds, zrems = {}, {}
end

-- Lanes are sorted sets scored by a global sequence: FIFO within a lane, across
-- processes, and re-adding an id never makes a second entry.  Sequence numbers are
-- reserved 256 at a time (gaps are harmless).
local seq_next, seq_last = 1, 0
local function lane_push(lane, id)
  if seq_next > seq_last then
    seq_last = redis.call('INCRBY', SEQUENCE, 256)
    seq_next = seq_last - 255
  end
  zadd_later(LANE[lane] or LANE.normal, seq_next, id)
  seq_next = seq_next + 1
end

-- push.events: 'all' appends every state change, 'final' only final states (the hash
-- keeps every <state>_at either way), 'off' none.  The stream is trimmed (MAXLEN ~) by a
-- script's first XADD only, not by every one: each argument of a write costs Redis its
-- parsing and its AOF record, and the cap is approximate anyway (a script adds at most a
-- batch beyond it until the next one trims).  Not by an XTRIM of its own: a call per
-- script, which at a few notifications per script (a carrier's TPS limit) counts.
local events_trimmed = false
local function emit(id, kind, ev)
  if EVENTS_MODE ~= 'all' and (EVENTS_MODE == 'off' or not FINAL[kind]) then return end
  if events_trimmed then
    redis.call('XADD', EVENTS, '*', 'type', 'notification.' .. kind, 'id', id, 'at', NOW, unpack(ev))
  else
    redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'type', 'notification.' .. kind, 'id', id, 'at', NOW,
      unpack(ev))
    events_trimmed = true
  end
end

-- EXPIRE is set at acceptance (retention + validity) and renewed when a final state
-- is reached: not on every step, which would double the writes of the hot path; and at
-- a final state only when the TTL left is shorter than the retention (a TTL read costs
-- Redis a fraction of an EXPIRE, which is a write with its AOF record).  ttl: the TTL to
-- set now (acceptance).  expires_at: the record's, when the caller read it.  Acceptance set
-- the key to expire at max(acceptance, expires_at) + retention (the validity left counted by
-- the accepting gateway's clock), so less than the retention can be left only near or after
-- expires_at, and the TTL need not be asked: a call saved on every receipt.  The margin of
-- a minute covers gateway hosts' clocks that differ (NTP keeps them within milliseconds).
local TTL_CLOCK_MARGIN = 60
local function transition(id, key, state, ntype, fields, ev, ttl, expires_at)
  local ts = state .. '_at'
  if state == 'submitting' then ts = 'submit_started_at' end
  redis.call('HSET', key, 'state', state, ts, NOW, unpack(fields))
  if ttl then
    redis.call('EXPIRE', key, ttl)
  elseif FINAL[state] then
    local valid_until = expires_at and tonumber(expires_at)
    if valid_until then
      if valid_until - TTL_CLOCK_MARGIN < now then redis.call('EXPIRE', key, RETENTION_S) end
    elseif redis.call('TTL', key) < RETENTION then
      redis.call('EXPIRE', key, RETENTION_S)
    end
  end
  if EVENTS_MODE == 'all' or (EVENTS_MODE == 'final' and FINAL[state]) then
    local e = {'notification_type', ntype or ''}
    for i = 1, #ev do e[i + 2] = ev[i] end
    emit(id, state, e)
  end
  count(state)
end

local function request_voice(id, key, not_before)
  local v = redis.call('HMGET', key, 'to', 'text', 'type')
  local text = v[2] or ''
  if string.sub(text, 1, #SIGNATURE) == SIGNATURE then text = string.sub(text, #SIGNATURE + 1) end
  redis.call('XADD', VOICE, '*', 'id', id, 'to', v[1] or '', 'text', text, 'not_before', not_before)
  redis.call('HSET', key, 'voice_requested_at', NOW)
  emit(id, 'voice_requested', {'notification_type', v[3] or ''})
  count('voice_requested')
end

-- h: the fields channel, partner, partner_receipt, voice_requested_at if the caller
-- has them already (nil: read them).
local function on_final(id, key, state, h)
  if state == 'failed' or state == 'rejected' then redis.call('ZADD', DEAD, now, id) end
  h = h or redis.call('HMGET', key, 'channel', 'partner', 'partner_receipt', 'voice_requested_at')
  if (state == 'undeliverable' or state == 'failed') and h[1] == 'auto' and not h[4] then
    request_voice(id, key, '0')
  end
  if h[2] and h[3] == '1' then
    redis.call('ZADD', PARTNER, now, id)
    partner_final[#partner_final + 1] = id
  end
end

-- One HMGET reads everything a receipt needs: the state, how many parts have receipts
-- (receipt_parts when only the first asked, else parts), the parts' receipts so far
-- (p0..p3; longer messages read the rest one by one: every field asked for is a scan of
-- the hash's listpack, a missing one of all of it), what on_final needs, and expires_at,
-- which spares the TTL read (transition).
local RECEIPT_FIELDS = {'state', 'parts', 'type', 'channel', 'partner', 'partner_receipt',
  'voice_requested_at', 'receipt_parts', 'p0', 'p1', 'p2', 'p3', 'expires_at', 'to'}
local PARTS_READ = 4
-- Digits compared between a receipt's addresses and the notification's number: the
-- subscriber part, the same with or without 86, +86 or 0086 before it.
local NUMBER_TAIL = 8

-- tails: the last NUMBER_TAIL digits of the receipt's addresses (space separated), or ''
-- when it carried no number.  A receipt that names neither this notification's number
-- was sent for another message with this message id (an SMSC that reuses ids, or a hex
-- or decimal reading of another's id): it is not applied, and false is returned.
local function apply_receipt(id, key, part, rstate, err, tails)
  local h = redis.call('HMGET', key, unpack(RECEIPT_FIELDS))
  if tails and tails ~= '' and h[14] and #h[14] >= NUMBER_TAIL and
      not string.find(' ' .. tails .. ' ', ' ' .. string.sub(h[14], -NUMBER_TAIL) .. ' ', 1, true) then
    count('receipt_wrong_number')
    return false
  end
  if not h[1] or FINAL[h[1]] then
    -- after the receipt timeout: noted for the operator, the state stays
    if h[1] == 'unconfirmed' then redis.call('HSET', key, 'late_receipt', rstate, 'late_receipt_at', NOW) end
    count('receipt_late')
    return
  end
  local pname = 'p' .. part
  local final_fields = {h[4], h[5], h[6], h[7]}
  if rstate == 'DELIVRD' then
    local np = tonumber(h[8] or h[2] or '1') or 1
    -- a part beyond the leading ones that asked: the last, which asked alone
    -- (carriers[].receipt_parts last), and its receipt decides alone
    if part >= np then np = 0 end
    for q = 0, np - 1 do
      if q ~= part then
        local v
        if q < PARTS_READ then v = h[9 + q] else v = redis.call('HGET', key, 'p' .. q) end
        if v ~= 'DELIVRD' then
          redis.call('HSET', key, pname, rstate)
          return
        end
      end
    end
    transition(id, key, 'delivered', h[3], {pname, rstate, 'receipt_state', 'DELIVRD', 'receipt_error', err},
      {'parts', int_s(np)}, nil, h[13])
    zrem_later(AWAITING, id)
    -- final: nothing left to lease (a receipt can beat the record of its own submit when
    -- the index entry is written first, in another partition)
    zrem_later(INFLIGHT, id)
    on_final(id, key, 'delivered', final_fields)
  elseif UNDELIVERABLE[rstate] then
    transition(id, key, 'undeliverable', h[3], {pname, rstate, 'receipt_state', rstate, 'receipt_error', err,
      'error', 'receipt ' .. rstate .. ' err ' .. err},
      {'receipt_state', rstate, 'error_code', err, 'part', int_s(part)}, nil, h[13])
    zrem_later(AWAITING, id)
    zrem_later(INFLIGHT, id)
    on_final(id, key, 'undeliverable', final_fields)
  elseif part >= PARTS_READ or h[9 + part] ~= rstate then
    redis.call('HSET', key, pname, rstate)
  end
end

-- Whether any receipt may be parked (keys.early_receipts_parked): read once per script.
local early_parked = nil
local function early_possible()
  if early_parked == nil then early_parked = redis.call('EXISTS', EARLY_PARKED) == 1 end
  return early_parked
end

local function flat_counts()
  local out = {}
  for k, v in pairs(counts) do out[#out + 1] = k; out[#out + 1] = tostring(v) end
  return out
end
