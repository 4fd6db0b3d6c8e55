-- Put notifications whose claim lease ran out (process killed) back at the front of
-- their lane, counting a possible duplicate.
-- KEYS: the ledger's (ledger.lua) and the listed notifications ('n'..id).
-- ARGV (after the ledger header): the cutoff (members scored after it are not taken),
-- the number of ids listed, then the ids (read by the
-- caller with ZRANGEBYSCORE; those no longer due are skipped).  Returns {{recovered}, counts, partner ids}.
-- include: take_listed.lua
-- include: ledger.lua
local listed = {}
for j = 1, tonumber(ARGV[FIRST + 1]) do listed[j] = ARGV[FIRST + 1 + j] end
local ids = take_listed(INFLIGHT, ARGV[FIRST], listed)
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
