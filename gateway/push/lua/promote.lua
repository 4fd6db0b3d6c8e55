-- Move scheduled notifications whose time has come back to their lane (or expire them).
-- KEYS: the ledger's (ledger.lua) and the listed notifications ('n'..id).
-- ARGV (after the ledger header): the cutoff (members scored after it are not taken),
-- the number of ids listed, then the ids (read by the
-- caller with ZRANGEBYSCORE; those no longer due are skipped).  Returns {{number taken}, counts, partner ids}.
-- include: take_listed.lua
-- include: ledger.lua
local listed = {}
for j = 1, tonumber(ARGV[FIRST + 1]) do listed[j] = ARGV[FIRST + 1 + j] end
local ids = take_listed(SCHEDULED, ARGV[FIRST], listed)
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
