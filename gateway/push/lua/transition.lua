-- Set one notification's state with extra fields (voice outcomes, operators).
-- KEYS: the ledger's (ledger.lua) and the notification ('n'..id).
-- ARGV (after the ledger header): id, state, number of fields, number of event fields,
-- fields (name, value, ...), event fields.  Returns {{'1' or '0' if unknown}, ...}.
-- include: ledger.lua
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
