-- Notifications still submitted whose receipt timeout passed become unconfirmed (final).
-- KEYS: the ledger's (ledger.lua) and the listed notifications ('n'..id).
-- ARGV (after the ledger header): the cutoff (members scored after it are not taken),
-- the number of ids listed, then the ids (read by the
-- caller with ZRANGEBYSCORE; those no longer due are skipped).  Returns {{taken, closed}, counts, partner ids}.
-- include: take_listed.lua
-- include: ledger.lua
local listed = {}
for j = 1, tonumber(ARGV[FIRST + 1]) do listed[j] = ARGV[FIRST + 1 + j] end
local ids = take_listed(AWAITING, ARGV[FIRST], listed)
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
