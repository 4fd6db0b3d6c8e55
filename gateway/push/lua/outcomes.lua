-- Apply a batch of submit outcomes and receipts (OutcomeWriter).
-- KEYS: the ledger's (ledger.lua), and per op: A its notification ('n'..id), index entries
-- ('m'..carrier..'\0'..message id) and parked-receipt keys ('e'..) of the indexed parts;
-- B P R W F L C Y the notification; X each candidate's index entry and the first one's
-- parked-receipt key.
-- ARGV (after the ledger header): n, early-receipt TTL seconds, most receipts parked in
-- this partition at once (push.early_receipts_max shared among partitions), then n ops:
--   A id carrier parts indexed ids... keys...    accepted by the carrier: the ids as the
--                                                carrier sent them, then their canonical
--                                                forms (the index keys for receipts);
--                                                indexed: the leading parts that asked for
--                                                a receipt, or -1 for the last alone
--   B ...                                        as A, its index entries written by the
--                                                caller in their own partitions, with plain
--                                                commands (OutcomeStore._write_index_entries)
--   P id carrier n ids...                        a long message partly accepted before it
--                                                failed: the parts' ids, a possible duplicate
--   R|W|F id due_at error unknown                retry / wait (no attempt) / failed
--   L id due_at error unknown cap <R|F op>       link down (free up to cap losses)
--   C id carrier error                           refused permanently by one carrier
--   Y id part state error tails                  a receipt whose notification the caller
--                                                found in the message-id index
--   X carrier state error tails excluded n candidates...
--                                                a receipt not found there (yet); tails:
--                                                its addresses' last digits ('' none);
--                                                excluded: notification ids (space
--                                                separated) its index entries named that
--                                                were sent to another number
-- Guarantees: an outcome for a notification no longer submitting changes nothing; a
-- receipt before its submit's message ids is parked and applied when they are recorded;
-- a receipt is applied only to a notification sent to a number it names (when it names
-- one); at most the cap of receipts is parked in a partition, beyond it the oldest are
-- dropped and counted (receipt_unparked:<carrier>).
-- Returns {{op numbers to send again}, {Y op numbers refused: another number}, {parked
-- receipts dropped for room, '<carrier> <message id>': the caller deletes their keys},
-- {index entries taken from another notification: the caller keeps them as previous},
-- counts, partner ids}: an X op whose index entry appeared since the caller looked (its
-- notification was not declared) is left for the caller to resolve and send again; a
-- refused Y op is resolved again without that notification.
-- include: ledger.lua
local n = tonumber(ARGV[FIRST])
local EARLY_TTL = tonumber(ARGV[FIRST + 1])
local EARLY_MAX = tonumber(ARGV[FIRST + 2])
local i = FIRST + 3
local again, refused = {}, {}
-- Receipts parked in this partition (EARLY_SET: '<carrier> <message id>' scored by when
-- parked), counted once per script that parks, those older than the TTL (expired) dropped
-- first.  Beyond EARLY_MAX the oldest are dropped (ZPOPMIN; the caller deletes their keys,
-- which this script was not given): a receipt that beat its own submit_sm_resp is applied
-- within seconds, so the oldest are those that match nothing (another account's, an id
-- format the gateway does not read), which would otherwise fill Redis for a day at the
-- carrier's rate, and a newer one that may still match keeps its place.
local parked_count = nil
local evicted = {}
-- Index entries this script took from another notification: '<carrier> <message id>
-- <its entry>', for the caller to keep as the id's previous entry.
local displaced = {}

-- A parked receipt's value: '<stat> <err>', then (since 2026-12-05) ' <tails>' when the
-- receipt carried numbers (an older gateway reads them as part of err).
local function parked_receipt(v)
  local sp = string.find(v, ' ', 1, true)
  local rest = string.sub(v, sp + 1)
  local sp2 = string.find(rest, ' ', 1, true)
  if not sp2 then return string.sub(v, 1, sp - 1), rest, '' end
  return string.sub(v, 1, sp - 1), string.sub(rest, 1, sp2 - 1), string.sub(rest, sp2 + 1)
end
local function count_parked()
  if parked_count == nil then
    redis.call('ZREMRANGEBYSCORE', EARLY_SET, '-inf', '(' .. string.format('%.3f', now - EARLY_TTL))
    parked_count = redis.call('ZCARD', EARLY_SET)
  end
  return parked_count
end

-- Park one more; beyond the cap drop the oldest, to be deleted by the caller.  Scored a
-- microsecond apart within a script, so that the oldest go first there too (members of
-- one score would go in byte order).
local parks = 0
local function park(member)
  parked_count = count_parked() + 1
  redis.call('ZADD', EARLY_SET, string.format('%.6f', now + parks * 1e-6), member)
  parks = parks + 1
  if parked_count > EARLY_MAX then
    local popped = redis.call('ZPOPMIN', EARLY_SET, parked_count - EARLY_MAX)
    for k = 1, #popped, 2 do
      evicted[#evicted + 1] = popped[k]
      count('receipt_unparked:' .. string.sub(popped[k], 1, string.find(popped[k], ' ', 1, true) - 1))
    end
    parked_count = EARLY_MAX
  end
end

-- formatted once: a number handed to redis.call is printed with %.17g each time
local RECEIPT_DUE = string.format('%.3f', now + RECEIPT_TIMEOUT)
for number = 1, n do
  local op = ARGV[i]
  if op == 'A' or op == 'B' then
    -- nr: the leading parts that asked for a receipt; only their ids are indexed.  -1: the
    -- last part alone asked (carriers[].receipt_parts last), indexed from `from` on.
    local id, carrier, np, nr = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local from = 1
    if nr < 0 then from, nr = np, 1 end
    local sent, mids = {}, {}
    for p = 1, np do
      sent[p] = ARGV[i + 4 + p]
      mids[p] = ARGV[i + 4 + np + p]
    end
    i = i + 5 + 2 * np
    local key = nkey(id)
    local h = redis.call('HMGET', key, 'state', 'type', 'priority')
    if h[1] == 'submitting' or h[1] == 'queued' or h[1] == 'scheduled' then
      zrem_later(INFLIGHT, id)
      if h[1] ~= 'submitting' then
        -- recovered after a lost lease, yet the submit did go out: record the truth
        redis.call('ZREM', LANE[h[3]] or LANE.normal, id)
        redis.call('ZREM', SCHEDULED, id)
      end
      local parts = int_s(np)
      local fields = {'carrier', carrier, 'parts', parts, 'message_ids', table.concat(sent, ' ')}
      if nr < np then fields[7] = 'receipt_parts'; fields[8] = int_s(nr) end
      transition(id, key, 'submitted', h[2], fields, {'carrier', carrier, 'parts', parts})
      for p = from, (op == 'A' and from + nr - 1 or 0) do
        local earlier = redis.call('SET', msgkey(carrier, mids[p]), id .. ' ' .. int_s(p - 1), 'EX', RETENTION_S,
          'GET')
        if earlier and string.sub(earlier, 1, #id + 1) ~= id .. ' ' then
          -- another notification's id before (an SMSC reusing ids): kept by the caller
          displaced[#displaced + 1] = carrier .. ' ' .. mids[p] .. ' ' .. earlier
        end
      end
      if nr > 0 and RECEIPT_TIMEOUT > 0 then zadd_later(AWAITING, RECEIPT_DUE, id) end
      for p = from, ((op == 'A' and early_possible()) and from + nr - 1 or 0) do
        local ek = earlykey(carrier, mids[p])
        local early = redis.call('GET', ek)
        if early then
          -- one that names another number stays parked: it is not this message's
          local rstate, err, tails = parked_receipt(early)
          if apply_receipt(id, key, p - 1, rstate, err, tails) ~= false then
            redis.call('DEL', ek)
            zrem_later(EARLY_SET, carrier .. ' ' .. mids[p])
            count('receipt_early_applied:' .. carrier)
          end
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
  elseif op == 'P' then
    local id, carrier, np = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local key = nkey(id)
    local h = redis.call('HMGET', key, 'state', 'partial_message_ids')
    if h[1] == 'submitting' then
      local ids = {}
      for p = 1, np do ids[p] = carrier .. ':' .. ARGV[i + 3 + p] end
      local all = table.concat(ids, ' ')
      if h[2] and h[2] ~= '' then all = h[2] .. ' ' .. all end
      redis.call('HSET', key, 'partial_message_ids', all)
      redis.call('HINCRBY', key, 'possible_duplicates', 1)
      count('possible_duplicate')
    end
    i = i + 4 + np
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
  elseif op == 'Y' then
    local id, part, rstate, err = ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
    if apply_receipt(id, nkey(id), part, rstate, err, ARGV[i + 5]) == false then
      refused[#refused + 1] = tostring(number)
    end
    i = i + 6
  elseif op == 'X' then
    local carrier, rstate, err, tails = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local excluded, nc = ' ' .. ARGV[i + 5] .. ' ', tonumber(ARGV[i + 6])
    local found = false
    for k = 1, nc do
      -- candidates whose index entry lives in another partition were looked up by the
      -- caller just before (not declared here)
      local mk = DECLARED['m' .. carrier .. '\0' .. ARGV[i + 6 + k]]
      local v = mk and redis.call('GET', mk)
      if v then
        local sp = string.find(v, ' ', 1, true)
        local id = string.sub(v, 1, sp - 1)
        if string.find(excluded, ' ' .. id .. ' ', 1, true) then
          -- already refused by that notification: another number's
        elseif not DECLARED['n' .. id] then
          again[#again + 1] = tostring(number)
          found = true
          break
        elseif apply_receipt(id, nkey(id), tonumber(string.sub(v, sp + 1)), rstate, err, tails) ~= false then
          found = true
          break
        end
      end
    end
    if not found and nc > 0 then
      local mid = ARGV[i + 7]
      local ek = earlykey(carrier, mid)
      -- with its numbers, so that it is applied only to a message sent to one of them
      local parked_value = rstate .. ' ' .. err
      if tails ~= '' then parked_value = parked_value .. ' ' .. tails end
      if redis.call('EXISTS', ek) == 1 then
        -- parked already: a final state replaces a non-final one; it waits from the first
        if RECEIPT_FINAL[rstate] then redis.call('SET', ek, parked_value, 'KEEPTTL') end
        count('receipt_early:' .. carrier)
      else
        -- SET first: while Redis refuses writes (maxmemory) this is refused and the
        -- carrier delivers the receipt again; after a script's first write Redis lets the
        -- others through.
        redis.call('SET', ek, parked_value, 'EX', EARLY_TTL)
        park(carrier .. ' ' .. mid)
        redis.call('SET', EARLY_PARKED, '1', 'EX', EARLY_TTL)
        early_parked = true
        count('receipt_early:' .. carrier)
      end
    end
    i = i + 7 + nc
  else
    flush_sorted_sets()  -- the ops before it are applied: keep the in-flight set true
    return redis.error_reply('unknown outcome op ' .. tostring(op))
  end
end
flush_sorted_sets()
return {{again, refused, evicted, displaced}, flat_counts(), partner_final}
