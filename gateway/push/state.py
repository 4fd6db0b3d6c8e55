"""The notification ledger: every notification's state in Redis, changed only by Lua.

Theory of operation
-------------------
A notification is the hash ``keys.notification(id)``.  Its ``state`` moves through::

    queued ──claim──> submitting ──accepted──> submitted ──receipts──> delivered
      │  ^              │   │                                   ├────> undeliverable
      │  │              │   │                  (no receipt in time) └─> unconfirmed
      │  └─promote──┐   │   └─transient──> scheduled (retry) ──promote──> queued
      v             │   └─permanent/last attempt──> failed
    scheduled ──────┘        (lease lost, kill -9) ──recover──> queued
    (quiet hours)
    rejected (at intake)      expired (at intake, promotion or claim)

Fields: ``type``, ``to`` (the 11 digits: only the dispatcher and the voice hand-off read
it; never put in events or logs), ``to_masked``, ``params`` (JSON), ``text``,
``priority``, ``channel``, ``expires_at``, ``quiet_hours``, ``attempts``, ``carrier``,
``parts``, ``message_ids`` (space separated, part order), ``p0``, ``p1``... (each part's
last receipt state), ``error``, ``reason``, ``possible_duplicates`` and a ``<state>_at``
timestamp for each state reached (``submit_started_at`` for submitting).  Each change
renews the key's EXPIRE (retention) and appends an event ``type=notification.<state>``
with the id and non-personal fields to ``keys.events_stream`` (approximately capped at
`events_maxlen` entries).

Why Lua: a change touches the hash, a lane / the scheduled set / the in-flight set, the
message-id index and the events stream together; one script is atomic and is one round
trip for a whole batch.  The scripts are batch-shaped: the intake accepts a batch of
stream entries (and XACKs them in the same script), the dispatcher claims a batch from
the lanes, and submit outcomes and receipts that arrive in the same reactor turn are
applied together (`OutcomeWriter`).

Crash safety: a claimed notification is in ``keys.inflight`` (a sorted set scored by its
lease deadline) from the moment it is claimed (``submit_started_at`` set) until its
outcome is recorded.  The live process renews its leases; after ``kill -9`` the leases
run out and `recover_expired_leases` puts such notifications back at the front of their
lane, counting a possible duplicate (the submit may have reached the carrier while its
response was lost).  Stale lane entries are harmless: a claim only takes ``queued`` ones.
Each claim carries a token (recorded in the hash and in ``keys.claim(token)``); a claim
sent again with the token of one whose reply was lost returns that batch instead of
taking another, so a lost reply orphans nothing.

A submit that asked for a receipt waits for it in ``keys.awaiting_receipt`` (scored by
now + push.receipt_timeout_seconds); `close_overdue_receipts` makes the ones still
``submitted`` at that time ``unconfirmed``: final, so nothing waits for ever (partners
get their receipt, UNKNOWN).  A receipt that comes later is noted on the hash
(``late_receipt``) and changes no state.

Receipts find their notification through ``keys.message_id(carrier, id)`` ("<id> <part>")
written when the submit is accepted.  A receipt that arrives before that (the carrier
answered faster than we recorded the submit_sm_resp) is parked under
``keys.early_receipt`` and applied by the same script that records the message ids.

Keys are passed to the scripts in ARGV, built by `gateway.store.keys.Keys` (one schema);
this supports a single Redis (with replicas), not Redis Cluster.  The client must be
created with ``decode_responses=True`` (as gateway/store/service.py does).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway import metrics
from gateway.privacy import mask_phone
from gateway.push.render import DEFAULT_SIGNATURE
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys

__all__ = [
    "FINAL_STATES",
    "STATES",
    "AcceptItem",
    "AcceptOutcome",
    "Claimed",
    "NotificationLedger",
    "OutcomeWriter",
    "new_claim_token",
    "public_view",
]

STATES = ("queued", "scheduled", "submitting", "submitted", "delivered", "undeliverable",
          "unconfirmed", "expired", "failed", "rejected")
FINAL_STATES = frozenset({"delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected"})
# Hash fields that hold personal data: never in events, status answers or logs.
PRIVATE_FIELDS = frozenset({"to", "text", "params"})

possible_duplicates = Counter(
    "gateway_push_possible_duplicates_total",
    "Submits retried after their response was lost (the citizen may get the message twice)",
    registry=metrics.REGISTRY,
)

_script_counters = {
    "receipt_early": Counter(
        "gateway_push_receipts_early_total",
        "Receipts that arrived before their submit response was recorded (parked)",
        registry=metrics.REGISTRY),
    "receipt_early_applied": Counter(
        "gateway_push_receipts_early_applied_total",
        "Parked receipts applied when the submit response was recorded", registry=metrics.REGISTRY),
    "claim_replayed": Counter(
        "gateway_push_claims_replayed_total",
        "Claims sent again after their reply was lost, answered with the batch they took",
        registry=metrics.REGISTRY),
    "receipt_late": Counter(
        "gateway_push_receipts_ignored_total",
        "Receipts for notifications already final or gone (duplicates)", registry=metrics.REGISTRY),
    "voice_requested": Counter(
        "gateway_push_voice_handoffs_total", "Notifications handed to the voice channel",
        registry=metrics.REGISTRY),
    "possible_duplicate": possible_duplicates,
}

# ----------------------------------------------------------------------------------------
# Lua.  ARGV[1] is the time; ARGV[2..25] the header built by NotificationLedger._header;
# each script's own arguments start at FIRST.  They travel as one JSON array (the script's
# only real argument) that the prologue decodes into a local ARGV: redis-py packs each
# argument in Python (a third of the intake's and the writer's CPU with thousands of
# them per batch), json.dumps and cjson.decode do the same work in C.
# ----------------------------------------------------------------------------------------

_PROLOGUE = r"""
local ARGV = cjson.decode(ARGV[1])
local NOW = ARGV[1]
local now = tonumber(NOW)
local RETENTION = tonumber(ARGV[2])
local MAXLEN = ARGV[3]
local NH, NT = ARGV[4], ARGV[5]
local LANE = {high = ARGV[6], normal = ARGV[7], bulk = ARGV[8]}
local SCHEDULED, INFLIGHT, DEAD, EVENTS = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local VOICE, PARTNER, SIGNATURE = ARGV[13], ARGV[14], ARGV[15]
local MH, MM, MT = ARGV[16], ARGV[17], ARGV[18]
local EH, EM, ET = ARGV[19], ARGV[20], ARGV[21]
local SEQUENCE, EARLY_PARKED = ARGV[22], ARGV[23]
local AWAITING, RECEIPT_TIMEOUT = ARGV[24], tonumber(ARGV[25])
local FIRST = 26
local counts = {}
local partner_final = {}
local FINAL = {delivered = true, undeliverable = true, unconfirmed = true, expired = true, failed = true,
  rejected = true}
local UNDELIVERABLE = {UNDELIV = true, EXPIRED = true, REJECTD = true, DELETED = true}
local RECEIPT_FINAL = {DELIVRD = true, UNDELIV = true, EXPIRED = true, REJECTD = true, DELETED = true}

local function nkey(id) return NH .. id .. NT end
local function msgkey(c, m) return MH .. c .. MM .. m .. MT end
local function earlykey(c, m) return EH .. c .. EM .. m .. ET end
local function count(what) counts[what] = (counts[what] or 0) + 1 end

-- Sorted-set adds and removals a script makes per notification are collected and sent
-- as one variadic ZADD / ZREM per key when the script ends (flush_sorted_sets): each
-- redis.call costs more than the member it carries.  Only for keys the script does not
-- read afterwards (lanes in accept and promote, the in-flight and awaiting-receipt sets in
-- claim and outcomes); adds go before removals, so a member both added and removed in one
-- script (a parked receipt applied as its submit is recorded) ends up removed.
-- redis.call(cmd, ..., list items) a chunk of `size` items at a time (unpack and the Lua
-- stack cap how many arguments one call takes); returns the replies in order.
local function call_chunked(size, list, cmd, ...)
  local replies = {}
  for k = 1, #list, size do
    local args = {cmd, ...}
    for j = k, math.min(k + size - 1, #list) do args[#args + 1] = list[j] end
    replies[#replies + 1] = redis.call(unpack(args))
  end
  return replies
end

-- The members of a sorted set scored at or before now (at most `limit`), removed from it:
-- what the scheduled, in-flight and awaiting-receipt sweeps each take.
local function take_due(key, limit)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', NOW, 'LIMIT', 0, limit)
  call_chunked(1000, ids, 'ZREM', key)
  return ids
end

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

local function emit(id, kind, ev)
  local args = {'XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'type', 'notification.' .. kind, 'id', id, 'at', NOW}
  for i = 1, #ev do args[#args + 1] = ev[i] end
  redis.call(unpack(args))
end

-- EXPIRE is set at acceptance (retention + validity) and renewed when a final state
-- is reached: not on every step, which would double the writes of the hot path.
local function transition(id, key, state, ntype, fields, ev, ttl)
  local ts = state .. '_at'
  if state == 'submitting' then ts = 'submit_started_at' end
  local args = {'HSET', key, 'state', state, ts, NOW}
  for i = 1, #fields do args[#args + 1] = fields[i] end
  redis.call(unpack(args))
  ttl = ttl or (FINAL[state] and RETENTION)
  if ttl then redis.call('EXPIRE', key, ttl) end
  local e = {'notification_type', ntype or ''}
  for i = 1, #ev do e[#e + 1] = ev[i] end
  emit(id, state, e)
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
-- (p0..p9; longer messages read the rest one by one) and what on_final needs.
local RECEIPT_FIELDS = {'state', 'parts', 'type', 'channel', 'partner', 'partner_receipt',
  'voice_requested_at', 'receipt_parts', 'p0', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8', 'p9'}

local function apply_receipt(id, key, part, rstate, err)
  local h = redis.call('HMGET', key, unpack(RECEIPT_FIELDS))
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
    for q = 0, np - 1 do
      if q ~= part then
        local v
        if q < 10 then v = h[9 + q] else v = redis.call('HGET', key, 'p' .. q) end
        if v ~= 'DELIVRD' then
          redis.call('HSET', key, pname, rstate)
          return
        end
      end
    end
    transition(id, key, 'delivered', h[3], {pname, rstate, 'receipt_state', 'DELIVRD', 'receipt_error', err},
      {'parts', tostring(np)})
    zrem_later(AWAITING, id)
    on_final(id, key, 'delivered', final_fields)
  elseif UNDELIVERABLE[rstate] then
    transition(id, key, 'undeliverable', h[3], {pname, rstate, 'receipt_state', rstate, 'receipt_error', err,
      'error', 'receipt ' .. rstate .. ' err ' .. err},
      {'receipt_state', rstate, 'error_code', err, 'part', tostring(part)})
    zrem_later(AWAITING, id)
    on_final(id, key, 'undeliverable', final_fields)
  elseif (part < 10 and h[9 + part] or nil) ~= rstate then
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
"""

_ACCEPT = r"""
local stream, group = ARGV[FIRST], ARGV[FIRST + 1]
local n = tonumber(ARGV[FIRST + 2])
local i = FIRST + 3
local out = {}
local acks = {}
-- Duplicates are rare: one EXISTS over the whole batch says whether any id is known;
-- only then is each id's state read (ids repeated within the batch are read too).
local any_known = false
do
  local keys, j = {}, i
  for _ = 1, n do
    keys[#keys + 1] = nkey(ARGV[j])
    j = j + 12 + tonumber(ARGV[j + 11])
  end
  for _, known in ipairs(call_chunked(1000, keys, 'EXISTS')) do
    if known > 0 then any_known = true end
  end
end
local seen = {}
for _ = 1, n do
  local id, entry, retry, disp = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local due, lane, cap_key, cap = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 7])
  local reason, ntype, ttl, nf = ARGV[i + 8], ARGV[i + 9], tonumber(ARGV[i + 10]), tonumber(ARGV[i + 11])
  local fstart = i + 12
  i = fstart + nf
  local key = nkey(id)
  local st = nil
  if any_known or seen[id] then st = redis.call('HGET', key, 'state') end
  seen[id] = true
  if st and not (st == 'rejected' or (retry == '1' and st == 'failed')) then
    out[#out + 1] = id; out[#out + 1] = st; out[#out + 1] = 'duplicate'
  else
    if st then redis.call('DEL', key); redis.call('ZREM', DEAD, id) end
    if cap_key ~= '' and (disp == 'queue' or disp == 'schedule') then
      local sent = tonumber(redis.call('GET', cap_key) or '0') or 0
      if sent >= cap then
        disp = 'reject'
        reason = 'daily cap: ' .. cap .. ' bulk reminders to this number today'
      else
        redis.call('INCR', cap_key)
        redis.call('EXPIRE', cap_key, 172800)
      end
    end
    -- The request's fields and the first state in one HSET.
    local fields = {'accepted_at', NOW, 'attempts', '0', 'type', ntype, 'priority', lane}
    for j = fstart, fstart + nf - 1 do fields[#fields + 1] = ARGV[j] end
    local state
    if disp == 'queue' then
      state = 'queued'
      transition(id, key, state, ntype, fields, {'priority', lane}, ttl)
      lane_push(lane, id)
    elseif disp == 'schedule' then
      state = 'scheduled'
      fields[#fields + 1] = 'due_at'; fields[#fields + 1] = due
      fields[#fields + 1] = 'scheduled_reason'; fields[#fields + 1] = 'quiet_hours'
      transition(id, key, state, ntype, fields, {'priority', lane, 'due_at', due}, ttl)
      redis.call('ZADD', SCHEDULED, due, id)
    elseif disp == 'expired' then
      state = 'expired'
      transition(id, key, state, ntype, fields, {})
      on_final(id, key, state)
    elseif disp == 'voice' then
      state = 'submitted'
      fields[#fields + 1] = 'carrier'; fields[#fields + 1] = 'voice'
      transition(id, key, state, ntype, fields, {'carrier', 'voice'}, ttl)
      request_voice(id, key, due)
    else
      state = 'rejected'
      fields[#fields + 1] = 'reason'; fields[#fields + 1] = reason
      transition(id, key, state, ntype, fields, {'reason', reason})
      on_final(id, key, state)
    end
    out[#out + 1] = id; out[#out + 1] = state; out[#out + 1] = (state == 'rejected') and reason or ''
  end
  if entry ~= '' then acks[#acks + 1] = entry end
end
-- Acknowledged and deleted by the script that recorded them, one command each per batch.
call_chunked(1000, acks, 'XACK', stream, group)
call_chunked(1000, acks, 'XDEL', stream)
flush_sorted_sets()
return {out, flat_counts(), partner_final}
"""

_CLAIM = r"""
local n = tonumber(ARGV[FIRST])
local reserve = tonumber(ARGV[FIRST + 1])
local lease = tonumber(ARGV[FIRST + 2])
local QUIET = ARGV[FIRST + 3]
local quiet = tonumber(QUIET)
local budget = tonumber(ARGV[FIRST + 4])
local TOKEN, CLAIMKEY = ARGV[FIRST + 5], ARGV[FIRST + 6]
local out = {}
local total = 0
local FIELDS = {'state', 'expires_at', 'to', 'text', 'attempts', 'failed_carriers', 'accepted_at', 'type',
  'quiet_hours', 'claim', 'priority'}

-- The same token again: the caller never saw this claim's reply (a connection lost, or
-- redis-py retrying the call).  Give back what that claim took and still holds (not
-- recovered after its lease, not claimed since by another token), and claim nothing new.
local earlier = redis.call('LRANGE', CLAIMKEY, 0, -1)
if #earlier > 0 then
  for _, id in ipairs(earlier) do
    local h = redis.call('HMGET', nkey(id), unpack(FIELDS))
    if h[1] == 'submitting' and h[10] == TOKEN then
      out[#out + 1] = {id, h[3] or '', h[4] or '', h[5] or '1', h[6] or '', h[7] or '0', h[8] or '', h[11] or 'normal'}
    end
  end
  count('claim_replayed')
  return {out, flat_counts(), partner_final}
end
local taken = {}

local function take(lane, want)
  local claimed = 0
  while claimed < want and budget > 0 do
    local ask = math.min(want - claimed, budget)
    local popped = redis.call('ZPOPMIN', LANE[lane], ask)
    budget = budget - #popped / 2
    for k = 1, #popped, 2 do
      local id = popped[k]
      local key = nkey(id)
      local h = redis.call('HMGET', key, unpack(FIELDS))
      if h[1] == 'queued' then
        local exp = tonumber(h[2] or '0') or 0
        if exp > 0 and exp <= now then
          transition(id, key, 'expired', h[8], {}, {})
          on_final(id, key, 'expired')
        elseif quiet > 0 and h[9] == '1' then
          transition(id, key, 'scheduled', h[8], {'due_at', QUIET, 'scheduled_reason', 'quiet_hours'},
            {'priority', lane, 'due_at', QUIET})
          redis.call('ZADD', SCHEDULED, quiet, id)
        else
          local attempts = (tonumber(h[5] or '0') or 0) + 1
          transition(id, key, 'submitting', h[8], {'attempts', tostring(attempts), 'claim', TOKEN},
            {'attempt', tostring(attempts)})
          zadd_later(INFLIGHT, now + lease, id)
          taken[#taken + 1] = id
          out[#out + 1] = {id, h[3] or '', h[4] or '', tostring(attempts), h[6] or '', h[7] or '0', h[8] or '', lane}
          claimed = claimed + 1
        end
      else
        count('stale_lane_entry')
      end
    end
    if #popped < 2 * ask then break end
  end
  total = total + claimed
  return claimed
end

take('high', n - 2 * reserve)
take('normal', reserve)
take('bulk', reserve)
take('high', n - total)
take('normal', n - total)
take('bulk', n - total)
call_chunked(1000, taken, 'RPUSH', CLAIMKEY)
if #taken > 0 then redis.call('EXPIRE', CLAIMKEY, math.ceil(2 * lease)) end
flush_sorted_sets()
return {out, flat_counts(), partner_final}
"""

_OUTCOMES = r"""
local n = tonumber(ARGV[FIRST])
local EARLY_TTL = tonumber(ARGV[FIRST + 1])
local i = FIRST + 2
local receipts = {}
for _ = 1, n do
  local op = ARGV[i]
  if op == 'A' then
    -- nr: the leading parts that asked for a receipt; only their ids are indexed
    local id, carrier, np, nr = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local mids = {}
    for p = 1, np do mids[p] = ARGV[i + 4 + p] end
    i = i + 5 + np
    local key = nkey(id)
    local h = redis.call('HMGET', key, 'state', 'type', 'priority')
    if h[1] == 'submitting' or h[1] == 'queued' or h[1] == 'scheduled' then
      zrem_later(INFLIGHT, id)
      if h[1] ~= 'submitting' then
        -- recovered after a lost lease, yet the submit did go out: record the truth
        redis.call('ZREM', LANE[h[3]] or LANE.normal, id)
        redis.call('ZREM', SCHEDULED, id)
      end
      local fields = {'carrier', carrier, 'parts', tostring(np), 'message_ids', table.concat(mids, ' ')}
      if nr < np then fields[7] = 'receipt_parts'; fields[8] = tostring(nr) end
      transition(id, key, 'submitted', h[2], fields, {'carrier', carrier, 'parts', tostring(np)})
      for p = 1, nr do
        redis.call('SET', msgkey(carrier, mids[p]), id .. ' ' .. (p - 1), 'EX', RETENTION)
      end
      if nr > 0 and RECEIPT_TIMEOUT > 0 then zadd_later(AWAITING, now + RECEIPT_TIMEOUT, id) end
      for p = 1, (early_possible() and nr or 0) do
        local ek = earlykey(carrier, mids[p])
        local early = redis.call('GET', ek)
        if early then
          redis.call('DEL', ek)
          local sp = string.find(early, ' ', 1, true)
          apply_receipt(id, key, p - 1, string.sub(early, 1, sp - 1), string.sub(early, sp + 1))
          count('receipt_early_applied')
        end
      end
    else
      count('outcome_ignored')
    end
  elseif op == 'R' or op == 'W' or op == 'F' or op == 'L' then
    local id, due, err, unknown = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    i = i + 5
    local key = nkey(id)
    local h = redis.call('HMGET', key, 'state', 'type')
    local free_reason = 'no_carrier'
    if op == 'L' then
      -- link down: free while link_losses <= the cap, else the op that follows applies
      -- (its name, id, due, error, unknown: ARGV[i + 1 .. i + 5])
      local cap = tonumber(ARGV[i])
      if h[1] == 'submitting' and redis.call('HINCRBY', key, 'link_losses', 1) <= cap then
        op, free_reason = 'W', 'link_down'
      else
        op, due, err, unknown = ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
      end
      i = i + 6
    end
    if h[1] == 'submitting' then
      zrem_later(INFLIGHT, id)
      if unknown == '1' then
        redis.call('HINCRBY', key, 'possible_duplicates', 1)
        count('possible_duplicate')
      end
      if op == 'F' then
        transition(id, key, 'failed', h[2], {'error', err}, {'error', err})
        on_final(id, key, 'failed')
      else
        local why = 'retry'
        if op == 'W' then
          -- no carrier could take it, or its link went away: not an attempt
          redis.call('HINCRBY', key, 'attempts', -1)
          why = free_reason
        end
        transition(id, key, 'scheduled', h[2], {'due_at', due, 'scheduled_reason', why, 'error', err},
          {'due_at', due, 'scheduled_reason', why, 'error', err})
        redis.call('ZADD', SCHEDULED, due, id)
      end
    else
      count('outcome_ignored')
    end
  elseif op == 'C' then
    local id, carrier, err = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local key = nkey(id)
    local h = redis.call('HMGET', key, 'state', 'failed_carriers')
    if h[1] == 'submitting' then
      local fc = carrier
      if h[2] and h[2] ~= '' then fc = h[2] .. ' ' .. carrier end
      redis.call('HSET', key, 'failed_carriers', fc, 'error', err)
    end
  elseif op == 'X' then
    local carrier, rstate, err, nc = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local found = false
    for k = 1, nc do
      local v = redis.call('GET', msgkey(carrier, ARGV[i + 4 + k]))
      if v then
        local sp = string.find(v, ' ', 1, true)
        local id = string.sub(v, 1, sp - 1)
        apply_receipt(id, nkey(id), tonumber(string.sub(v, sp + 1)), rstate, err)
        found = true
        break
      end
    end
    if not found and nc > 0 then
      local ek = earlykey(carrier, ARGV[i + 5])
      if RECEIPT_FINAL[rstate] or redis.call('EXISTS', ek) == 0 then
        redis.call('SET', ek, rstate .. ' ' .. err, 'EX', EARLY_TTL)
        redis.call('SET', EARLY_PARKED, '1', 'EX', EARLY_TTL)
        early_parked = true
      end
      count('receipt_early')
    end
    i = i + 5 + nc
  else
    flush_sorted_sets()  -- the ops before it are applied: keep the in-flight set true
    return redis.error_reply('unknown outcome op ' .. tostring(op))
  end
end
flush_sorted_sets()
return {{}, flat_counts(), partner_final}
"""

_PROMOTE = r"""
local ids = take_due(SCHEDULED, tonumber(ARGV[FIRST]))
for _, id in ipairs(ids) do
  local key = nkey(id)
  local h = redis.call('HMGET', key, 'state', 'priority', 'expires_at', 'type')
  if h[1] == 'scheduled' then
    local exp = tonumber(h[3] or '0') or 0
    if exp > 0 and exp <= now then
      transition(id, key, 'expired', h[4], {}, {})
      on_final(id, key, 'expired')
    else
      transition(id, key, 'queued', h[4], {}, {'priority', h[2] or 'normal'})
      lane_push(h[2], id)
    end
  end
end
flush_sorted_sets()
return {{tostring(#ids)}, flat_counts(), partner_final}
"""

_RECEIPTS_OVERDUE = r"""
local ids = take_due(AWAITING, tonumber(ARGV[FIRST]))
local closed = 0
for _, id in ipairs(ids) do
  local key = nkey(id)
  local h = redis.call('HMGET', key, 'state', 'type', 'submitted_at')
  if h[1] == 'submitted' then
    local waited = math.floor(now - (tonumber(h[3] or NOW) or now))
    local err = 'no receipt within ' .. waited .. ' s'
    transition(id, key, 'unconfirmed', h[2], {'error', err}, {'error', err})
    on_final(id, key, 'unconfirmed')
    closed = closed + 1
  end
end
return {{tostring(#ids), tostring(closed)}, flat_counts(), partner_final}
"""

_RECOVER = r"""
local ids = take_due(INFLIGHT, tonumber(ARGV[FIRST]))
local recovered = 0
for _, id in ipairs(ids) do
  local key = nkey(id)
  local h = redis.call('HMGET', key, 'state', 'priority', 'type')
  if h[1] == 'submitting' then
    -- submit_started_at is set: the submit may have reached the carrier
    redis.call('HINCRBY', key, 'possible_duplicates', 1)
    count('possible_duplicate')
    transition(id, key, 'queued', h[3], {'recovered_at', NOW}, {'priority', h[2] or 'normal', 'recovered', '1'})
    redis.call('ZADD', LANE[h[2]] or LANE.normal, 0, id)
    recovered = recovered + 1
  end
end
return {{tostring(recovered)}, flat_counts(), partner_final}
"""

_TRANSITION = r"""
local id, state = ARGV[FIRST], ARGV[FIRST + 1]
local nf, ne = tonumber(ARGV[FIRST + 2]), tonumber(ARGV[FIRST + 3])
local key = nkey(id)
local ntype = redis.call('HGET', key, 'type')
if not ntype then return {{'0'}, {}, {}} end
local fields, ev = {}, {}
for j = 1, nf do fields[j] = ARGV[FIRST + 3 + j] end
for j = 1, ne do ev[j] = ARGV[FIRST + 3 + nf + j] end
redis.call('ZREM', INFLIGHT, id)
transition(id, key, state, ntype, fields, ev)
if FINAL[state] then on_final(id, key, state) end
return {{'1'}, flat_counts(), partner_final}
"""


# ----------------------------------------------------------------------------------------
# Python side
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptItem:
    """One request ready for `NotificationLedger.accept`.

    disposition: "queue", "schedule" (due_at), "expired", "voice" (due_at = not_before),
    "reject" (reason).  cap_key/cap: the daily-cap counter for bulk reminders ("" = none).
    fields: further hash fields (to, to_masked, params, text, channel, expires_at, ...).
    """

    id: str
    type: str
    disposition: str
    lane: str
    fields: Mapping[str, str]
    due_at: float = 0.0
    reason: str = ""
    cap_key: str = ""
    cap: int = 0
    entry_id: str = ""
    retry: bool = False
    expires_at: float = 0.0  # the record lives retention_seconds beyond this


@dataclass(frozen=True)
class AcceptOutcome:
    id: str
    state: str
    duplicate: bool
    reason: str = ""


@dataclass(frozen=True)
class Claimed:
    """A notification claimed for submission (in keys.inflight under a lease)."""

    id: str
    digits: str
    text: str
    attempts: int
    failed_carriers: tuple[str, ...]
    accepted_at: float
    type: str
    lane: str


# ensure_ascii=False: the texts travel as UTF-8, as they did as separate arguments.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def new_claim_token() -> str:
    return uuid.uuid4().hex


def _fmt(value: float) -> str:
    # Times to the millisecond: enough for ordering and far below any timer we run.
    return f"{value:.3f}"


def _split_key(template: str, holes: int) -> list[str]:
    return template.split("\x00", holes)


class NotificationLedger:
    """Reads and changes notifications; every state change goes through here.

    Args:
        redis: a redis.asyncio client created with decode_responses=True.
        keys: the key schema.
        retention_seconds: EXPIRE of a notification (and of its message-id index).
        events_maxlen: approximate cap of the events stream.
        signature: stripped from texts handed to voice.
        early_receipt_ttl_seconds: how long a receipt waits for its submit response.
        receipt_timeout_seconds: how long a submit waits for its receipt before it is
            unconfirmed (0: for ever).
    """

    def __init__(self, redis: Any, keys: Keys, retention_seconds: float, *,
                 events_maxlen: int = 1_000_000, signature: str = DEFAULT_SIGNATURE,
                 early_receipt_ttl_seconds: float = 86_400.0, receipt_timeout_seconds: float = 172_800.0,
                 on_partner_final: Any = None) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = int(max(1, retention_seconds))
        self.early_receipt_ttl_seconds = int(max(1, early_receipt_ttl_seconds))
        # Called with the ids of partner messages that reached a final state.
        self.on_partner_final = on_partner_final
        nh, nt = _split_key(keys.notification("\x00"), 1)
        mh, mm, mt = _split_key(keys.message_id("\x00", "\x00"), 2)
        eh, em, et = _split_key(keys.early_receipt("\x00", "\x00"), 2)
        self._header = [
            str(self.retention_seconds), str(events_maxlen), nh, nt,
            keys.lane("high"), keys.lane("normal"), keys.lane("bulk"),
            keys.scheduled, keys.inflight, keys.dead_letters, keys.events_stream,
            keys.voice_requests, keys.partner_receipts_pending, signature,
            mh, mm, mt, eh, em, et, keys.lane_sequence, keys.early_receipts_parked,
            keys.awaiting_receipt, str(int(max(0, receipt_timeout_seconds))),
        ]
        # The header as the middle of a JSON array: "a","b",...,"z".
        self._header_json = _dumps(self._header)[1:-1]
        register = redis.register_script
        self._accept = register(_PROLOGUE + _ACCEPT)
        self._claim = register(_PROLOGUE + _CLAIM)
        self._outcomes = register(_PROLOGUE + _OUTCOMES)
        self._promote = register(_PROLOGUE + _PROMOTE)
        self._recover = register(_PROLOGUE + _RECOVER)
        self._receipts_overdue = register(_PROLOGUE + _RECEIPTS_OVERDUE)
        self._transition = register(_PROLOGUE + _TRANSITION)

    # -- script plumbing -------------------------------------------------------------

    async def _run(self, script: Any, now: float, args: list[Any]) -> list[Any]:
        # Strings and ints only (the scripts tonumber() what they count with).
        tail = "," + _dumps(args)[1:] if args else "]"
        payload = f'["{_fmt(now)}",{self._header_json}{tail}'
        result = await script(keys=[], args=[payload])
        payload, flat_counts, partner_ids = result
        for k in range(0, len(flat_counts), 2):
            what, n = flat_counts[k], int(flat_counts[k + 1])
            if what in STATES:
                metrics.notifications.labels(what).inc(n)
            elif what in _script_counters:
                _script_counters[what].inc(n)
        if partner_ids and self.on_partner_final is not None:
            self.on_partner_final(list(partner_ids))
        return list(payload)

    # -- the contract other components use ---------------------------------------------

    async def transition(self, notification_id: str, state: str, *, now: float, **fields: Any) -> bool:
        """Set `state`, `<state>_at` and `fields`; append the event; count it.

        Fields named to, text or params are stored but never put in the event.  Returns
        False when the notification does not exist (nothing is written then).
        """
        if state not in STATES:
            raise ValueError(f"unknown notification state {state!r}")
        flat: list[str] = []
        event: list[str] = []
        for name, value in fields.items():
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            flat += [name, text]
            if name not in PRIVATE_FIELDS:
                event += [name, text]
        payload = await self._run(self._transition, now, [notification_id, state, len(flat), len(event), *flat, *event])
        return payload[0] == "1"

    async def get(self, notification_id: str) -> dict[str, Any] | None:
        """The public view (masked recipient, no text) or None when unknown."""
        raw = await self.redis.hgetall(self.keys.notification(notification_id))
        return public_view(notification_id, raw) if raw else None

    async def raw(self, notification_id: str) -> dict[str, str]:
        """Every field, including the digits and the text: for the dispatcher and tests."""
        return dict(await self.redis.hgetall(self.keys.notification(notification_id)))

    # -- batch operations ---------------------------------------------------------------

    async def accept(self, items: Sequence[AcceptItem], *, now: float,
                     stream: tuple[str, str] = ("", "")) -> list[AcceptOutcome]:
        """Record a batch of validated requests (idempotent per id); XACK their entries.

        An id that exists is a duplicate and left alone, unless its state is rejected (a
        corrected request replaces it) or it failed and the item is a dead-letter retry.
        """
        if not items:
            return []
        args: list[Any] = [stream[0], stream[1], len(items)]
        for item in items:
            fields: list[str] = []
            for name, value in item.fields.items():
                fields += [name, value]
            ttl = self.retention_seconds + max(0, int(item.expires_at - now))
            args += [item.id, item.entry_id, "1" if item.retry else "0", item.disposition,
                     _fmt(item.due_at) if item.due_at else "0", item.lane, item.cap_key, item.cap, item.reason,
                     item.type, ttl, len(fields), *fields]
        payload = await self._run(self._accept, now, args)
        return [AcceptOutcome(payload[k], payload[k + 1], payload[k + 2] == "duplicate",
                              "" if payload[k + 2] == "duplicate" else payload[k + 2])
                for k in range(0, len(payload), 3)]

    async def ack_only(self, stream: str, group: str, entry_ids: Iterable[str]) -> None:
        """XACK and delete entries that carried nothing to record (e.g. empty entries)."""
        ids = list(entry_ids)
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, group, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()

    async def claim(self, n: int, *, now: float, lease_seconds: float, quiet_until: float,
                    reserve: int = 0, token: str | None = None) -> list[Claimed]:
        """Take up to `n` queued notifications, highest lane first, for submission.

        Expired ones become expired; quiet-hours types claimed inside quiet hours go back
        to scheduled (`quiet_until` is the end of the current window or 0).

        `token` names this claim (a fresh one when None).  Called again with a token whose
        claim did happen (its reply was lost on the way), it returns what that claim took
        and still holds, and takes nothing new: a lost reply costs no lease wait and no
        possible duplicate.
        """
        if n <= 0:
            return []
        token = token or new_claim_token()
        payload = await self._run(self._claim, now, [n, reserve, _fmt(lease_seconds),
                                                     _fmt(quiet_until), max(4 * n, 100),
                                                     token, self.keys.claim(token)])
        rank = {"high": 0, "normal": 1, "bulk": 2}
        claimed = [Claimed(row[0], row[1], row[2], int(row[3]), tuple(row[4].split()) if row[4] else (),
                           float(row[5]), row[6], row[7]) for row in payload]
        claimed.sort(key=lambda c: rank.get(c.lane, 1))  # stable: FIFO within a lane
        return claimed

    async def apply(self, ops: Sequence[Sequence[Any]], *, now: float) -> None:
        """Apply outcome ops (see OutcomeWriter) in one script."""
        if not ops:
            return
        args: list[Any] = [len(ops), self.early_receipt_ttl_seconds]
        for op in ops:
            args.extend(op)
        await self._run(self._outcomes, now, args)

    async def promote_due(self, *, now: float, limit: int = 1000) -> int:
        """Move scheduled notifications whose time has come to their lane; how many."""
        payload = await self._run(self._promote, now, [limit])
        return int(payload[0])

    async def close_overdue_receipts(self, *, now: float, limit: int = 1000) -> tuple[int, int]:
        """Notifications still ``submitted`` whose receipt timeout has passed become
        ``unconfirmed``; returns (entries due, notifications closed)."""
        payload = await self._run(self._receipts_overdue, now, [limit])
        return int(payload[0]), int(payload[1])

    async def recover_expired_leases(self, *, now: float, limit: int = 1000) -> int:
        """Put notifications whose claim lease ran out back at the front of their lane."""
        payload = await self._run(self._recover, now, [limit])
        return int(payload[0])

    async def renew_leases(self, ids: Iterable[str], *, deadline: float) -> None:
        """Extend the leases of notifications this process is still submitting."""
        ids = list(ids)
        if ids:
            mapping = dict.fromkeys(ids, deadline)
            await self.redis.zadd(self.keys.inflight, mapping, xx=True)


# ----------------------------------------------------------------------------------------
# Outcome ops: built by the dispatcher and the receipt recorder, applied in batches.
# ----------------------------------------------------------------------------------------


def op_accepted(notification_id: str, carrier: str, message_ids: Sequence[str], *,
                receipt_parts: int | None = None) -> tuple[Any, ...]:
    """The carrier accepted every part; message ids in part order (canonical form).

    receipt_parts: how many leading parts asked for a receipt (None: all); only their
    ids are indexed, and delivery is judged on their receipts alone.
    """
    parts = len(message_ids)
    indexed = parts if receipt_parts is None else max(0, min(receipt_parts, parts))
    return ("A", notification_id, carrier, parts, indexed, *message_ids)


def op_retry(notification_id: str, due_at: float, error: str, response_unknown: bool) -> tuple[Any, ...]:
    return ("R", notification_id, _fmt(due_at), error, "1" if response_unknown else "0")


def op_wait(notification_id: str, due_at: float, error: str) -> tuple[Any, ...]:
    """No carrier could take it now: scheduled again without using up an attempt."""
    return ("W", notification_id, _fmt(due_at), error, "0")


def op_failed(notification_id: str, error: str, response_unknown: bool) -> tuple[Any, ...]:
    return ("F", notification_id, "0", error, "1" if response_unknown else "0")


def op_link_down(notification_id: str, due_at: float, error: str, response_unknown: bool,
                 max_link_losses: int, otherwise: Sequence[Any]) -> tuple[Any, ...]:
    """The link went away under the submit: scheduled again without spending an attempt
    while the notification's ``link_losses`` stay within `max_link_losses`; beyond that
    `otherwise` (an op_retry or op_failed for the same id) applies."""
    return ("L", notification_id, _fmt(due_at), error, "1" if response_unknown else "0",
            max_link_losses, *otherwise)


def op_carrier_refused(notification_id: str, carrier: str, error: str) -> tuple[Any, ...]:
    """A permanent failure at one carrier; the dispatcher fails over to another."""
    return ("C", notification_id, carrier, error)


def op_receipt(carrier: str, state: str, error_code: str, candidates: Sequence[str]) -> tuple[Any, ...]:
    """A delivery receipt; candidates: canonical message-id forms to look up, best first."""
    return ("X", carrier, state, error_code or "", len(candidates), *candidates)


# ----------------------------------------------------------------------------------------


_PUBLIC_SCALARS = ("state", "type", "priority", "channel", "carrier", "error", "reason",
                   "receipt_state", "late_receipt", "scheduled_reason", "source", "partner")
_PUBLIC_NUMBERS = ("attempts", "parts", "possible_duplicates")


def public_view(notification_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """A notification as the status API shows it: masked recipient, no text or params."""
    view: dict[str, Any] = {"id": notification_id}
    for name in _PUBLIC_SCALARS:
        if raw.get(name):
            view[name] = raw[name]
    for name in _PUBLIC_NUMBERS:
        if raw.get(name):
            view[name] = int(raw[name])
    view["to"] = raw.get("to_masked") or mask_phone(raw.get("to", ""))
    if raw.get("message_ids"):
        view["message_ids"] = raw["message_ids"].split()
    parts = int(raw.get("parts") or 0)
    if parts:
        view["part_states"] = [raw.get(f"p{p}", "") for p in range(parts)]
    if raw.get("failed_carriers"):
        view["failed_carriers"] = raw["failed_carriers"].split()
    for name, value in raw.items():
        if name.endswith("_at") and value:
            try:
                view[name] = float(value)
            except ValueError:
                continue
    return view


# ----------------------------------------------------------------------------------------
# Coalescing writer
# ----------------------------------------------------------------------------------------


class OutcomeWriter:
    """Collects outcome ops arriving in one reactor turn and applies them in one script.

    `add(op)` returns a Deferred that fires once the op is in Redis.  One flush runs at a
    time; ops added meanwhile form the next batch, so batches grow with the load.

    When Redis is unreachable, ops with ``keep=True`` (submit outcomes: the message went
    out, its message ids must be recorded) stay queued and are retried with backoff;
    ops with ``keep=False`` (receipts) fail their Deferred, so that the link does not
    acknowledge the deliver_sm and the carrier delivers the receipt again.
    """

    def __init__(self, ledger: NotificationLedger, clock: Any, *, max_batch: int = 5000,
                 backoff_initial_seconds: float = 0.1, backoff_max_seconds: float = 5.0) -> None:
        self.ledger = ledger
        self.clock = clock
        self.max_batch = max_batch
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        # (op, what to tell when it is applied, keep): a Deferred, or a _Then (add_then)
        self._pending: list[tuple[Sequence[Any], Any, bool]] = []
        self._scheduled = False
        self._flushing = False
        self._idle_waiters: list[Deferred[None]] = []

    def add(self, op: Sequence[Any], *, keep: bool = True) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._enqueue((op, d, keep))
        return d

    def add_then(self, op: Sequence[Any], callback: Callable[..., object], *args: Any) -> None:
        """Like ``add(op, keep=True)``, but calls ``callback(*args)`` once the op is
        applied or has failed (the writer logs failures), without a Deferred: the
        dispatcher records every submit outcome so, and a Deferred with its callbacks
        cost more than the record itself."""
        self._enqueue((op, _Then(callback, args), True))

    def _enqueue(self, entry: tuple[Sequence[Any], Any, bool]) -> None:
        # One flush per reactor turn: ops added meanwhile join the batch.
        self._pending.append(entry)
        if not self._scheduled and not self._flushing:
            self._scheduled = True
            self.clock.callLater(0, self._start)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _start(self) -> None:
        self._scheduled = False
        if self._flushing:
            return
        if not self._pending:
            self._release_waiters()
            return
        self._flushing = True
        as_deferred(self._flush()).addErrback(
            lambda f: _writer_log.failure("outcome writer stopped", f))

    async def _flush(self) -> None:
        delay = self.backoff_initial_seconds
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    await self.ledger.apply([op for op, _, _ in batch], now=self.clock.seconds())
                except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                    kept = [entry for entry in batch if entry[2]]
                    for _, d, keep in batch:
                        if not keep:
                            d.errback(e)  # only add() takes keep=False, so a Deferred
                    self._pending[:0] = kept
                    _writer_log.error("redis unavailable while recording {count} outcomes: {error}; retrying",
                                      count=len(batch), error=type(e).__name__)
                    await _sleep(self.clock, delay)
                    delay = min(delay * 2, self.backoff_max_seconds)
                    continue
                except Exception as e:
                    _writer_log.failure("recording {count} outcomes failed", count=len(batch))
                    for _, d, _ in batch:
                        d.errback(e)
                    continue
                delay = self.backoff_initial_seconds
                for _, d, _ in batch:
                    d.callback(None)
        finally:
            self._flushing = False
            if self._pending and not self._scheduled:
                self._scheduled = True
                self.clock.callLater(0, self._start)
            elif not self._pending:
                self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a bounded wait may have given up (cancelled) meanwhile
                waiter.callback(None)

    async def flushed(self) -> None:
        """Wait until every op added so far is applied (or failed)."""
        if not self._pending and not self._flushing and not self._scheduled:
            return
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        await wait_deferred(d)


class _Then:
    """What `OutcomeWriter.add_then` calls, shaped like the Deferred that `add` uses."""

    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args

    def callback(self, _: object) -> None:
        self.function(*self.args)

    def errback(self, _: object) -> None:
        self.function(*self.args)  # the writer logged it; the lease recovers the message


async def _sleep(clock: Any, seconds: float) -> None:
    await wait_deferred(deferLater(clock, seconds))


_writer_log = Logger()
