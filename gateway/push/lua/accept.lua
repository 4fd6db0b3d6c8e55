-- Accept a batch of validated intake requests; XACK their stream entries and trim what
-- the consumer group no longer needs.
-- KEYS: the ledger's (ledger.lua), with each request's notification ('n'..id), its
-- daily-cap counter if any ('c'..k) and the intake stream ('s', when entries are acked).
-- ARGV (after the ledger header): group, n, then per request: id, entry id, retry (1/0),
-- disposition (queue/schedule/expired/voice/reject), due_at, lane, cap counter label
-- ('' for none), cap, reason, type, ttl, number of fields, fields (name, value, ...).
-- Guarantees: idempotent per id (a known id is a duplicate, unless rejected before or a
-- dead-letter retry of a failed one); the record, its first state, its lane or schedule
-- entry, its event and the stream acknowledgement happen together or not at all.
-- Returns {{id, state, reason or 'duplicate'}..., counts, partner ids}.
-- include: ledger.lua
-- include: trim_intake.lua
local group = ARGV[FIRST]
local n = tonumber(ARGV[FIRST + 1])
local i = FIRST + 2
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
  local reason, ntype, ttl, nf = ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], tonumber(ARGV[i + 11])
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
      cap_key = declared(cap_key)
      local sent = tonumber(redis.call('GET', cap_key) or '0') or 0
      if sent >= cap then
        disp = 'reject'
        reason = 'daily cap: ' .. cap .. ' bulk reminders to this number today'
      else
        redis.call('INCR', cap_key)
        redis.call('EXPIRE', cap_key, 172800)
      end
    end
    -- The request's fields and the first state in one HSET (no attempts yet: absent is 0).
    local fields = {'accepted_at', NOW, 'type', ntype, 'priority', lane}
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
-- Acknowledged by the script that recorded them (one XACK per batch), then trimmed
-- (trim_intake.lua).
if #acks > 0 then
  local stream = declared('s')
  call_chunked(1000, acks, 'XACK', stream, group)
  trim_intake(stream, group)
end
flush_sorted_sets()
return {out, flat_counts(), partner_final}
