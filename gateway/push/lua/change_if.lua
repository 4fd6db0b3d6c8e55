-- Change a notification only while it is in one of the given states (partners'
-- cancel_sm and replace_sm: only what has not been handed to a carrier may change).
-- KEYS: the ledger's (ledger.lua) and the notification ('n'..id).
-- ARGV (after the ledger header): id, allowed states (space separated), new state ('':
-- keep the state, only set the fields), number of fields, fields (name, value, ...).
-- Guarantees: checked and written in one step, so a claim cannot slip in between; a new
-- state leaves the lanes and the scheduled set, appends its event and, when final, does
-- what every final state does (dead letters, partner receipts).
-- Returns {{'1' or '0', the state found}, counts, partner ids}.
-- include: ledger.lua
local id, allowed, state = ARGV[FIRST], ARGV[FIRST + 1], ARGV[FIRST + 2]
local nf = tonumber(ARGV[FIRST + 3])
local key = nkey(id)
local h = redis.call('HMGET', key, 'state', 'type', 'priority')
local found = h[1] or ''
local ok = false
for s in string.gmatch(allowed, '%S+') do
  if s == found then ok = true end
end
if not ok then return {{'0', found}, flat_counts(), partner_final} end
local fields = {}
for j = 1, nf do fields[j] = ARGV[FIRST + 3 + j] end
if state == '' then
  if nf > 0 then redis.call('HSET', key, unpack(fields)) end
  return {{'1', found}, flat_counts(), partner_final}
end
redis.call('ZREM', LANE[h[3]] or LANE.normal, id)
redis.call('ZREM', SCHEDULED, id)
local ev = {}
for j = 1, nf, 2 do
  if fields[j] ~= 'text' and fields[j] ~= 'to' and fields[j] ~= 'params' then
    ev[#ev + 1] = fields[j]; ev[#ev + 1] = fields[j + 1]
  end
end
transition(id, key, state, h[2], fields, ev)
if FINAL[state] then on_final(id, key, state) end
return {{'1', found}, flat_counts(), partner_final}
