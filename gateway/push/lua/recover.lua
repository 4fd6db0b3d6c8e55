-- Put notifications whose claim lease ran out (process killed) back at the front of
-- their lane, counting a possible duplicate.
-- ARGV (after the ledger header): limit.  Returns {{recovered}, counts, partner ids}.
-- include: take_due.lua
-- include: ledger.lua
local ids = take_due(INFLIGHT, NOW, tonumber(ARGV[FIRST]))
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
