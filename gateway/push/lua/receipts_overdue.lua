-- Notifications still submitted whose receipt timeout passed become unconfirmed (final).
-- ARGV (after the ledger header): limit.  Returns {{taken, closed}, counts, partner ids}.
-- include: take_due.lua
-- include: ledger.lua
local ids = take_due(AWAITING, NOW, tonumber(ARGV[FIRST]))
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
