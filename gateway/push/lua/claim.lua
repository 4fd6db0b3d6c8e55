-- Claim up to n queued notifications for submission, high lane first, with a reserve
-- offered to normal and bulk.
-- KEYS: the ledger's (ledger.lua), the claim list ('k') and the notification of each
-- candidate ('n'..id).
-- ARGV (after the ledger header): how many to take from the high, normal and bulk lanes
-- (the caller shares a batch among partitions and lanes: high first, a reserve for the
-- lower lanes), lease seconds, quiet-hours end (0: not in quiet hours), token, mode
-- ('claim', or 'replay' with the ids of the claim list declared), the number of
-- candidates of the high, normal and bulk lanes, then the candidates, lane by lane (the
-- caller read them with ZRANGE: a script may only touch the notifications it declared,
-- so it cannot pop unknown ones).  A candidate that is gone or stale is made up for by
-- the next ones, of its lane first, then of the others.
-- Guarantees: each claimed notification is submitting, in the in-flight set under a lease
-- and listed under the token; expired ones end expired, quiet-hours ones go back to
-- scheduled.  A candidate no longer in its lane (another process took it since it was
-- read) is skipped; at most n are taken.  The same token again returns what that claim
-- holds and takes nothing new; in 'claim' mode it answers {'replay'} instead, so that the
-- caller declares the listed ids and asks again in 'replay' mode.
-- include: ledger.lua
local QUOTA = {high = tonumber(ARGV[FIRST]), normal = tonumber(ARGV[FIRST + 1]), bulk = tonumber(ARGV[FIRST + 2])}
local n = QUOTA.high + QUOTA.normal + QUOTA.bulk
local lease = tonumber(ARGV[FIRST + 3])
local LEASE_DEADLINE = string.format('%.3f', now + lease)  -- printed once, not per id
local QUIET = ARGV[FIRST + 4]
local quiet = tonumber(QUIET)
local TOKEN, MODE = ARGV[FIRST + 5], ARGV[FIRST + 6]
local CLAIMKEY = declared('k')
local out = {}
local total = 0
local FIELDS = {'state', 'expires_at', 'to', 'text', 'attempts', 'failed_carriers', 'accepted_at', 'type',
  'quiet_hours', 'claim', 'priority'}
-- A new claim knows the lane and needs no token: the first nine (each field asked of a
-- listpack hash is a scan of it, a missing one such as claim of all of it).
local TAKE_FIELDS = {unpack(FIELDS, 1, 9)}

-- The same token again: the caller never saw this claim's reply (a connection lost, or
-- redis-py retrying the call).  Give back what that claim took and still holds (not
-- recovered after its lease, not claimed since by another token), and claim nothing new.
-- A new token (claim mode) has no list to read: one EXISTS, not an LRANGE too.
if MODE == 'claim' and redis.call('EXISTS', CLAIMKEY) == 1 then return {{'replay'}, {}, {}} end
local earlier = MODE == 'replay' and redis.call('LRANGE', CLAIMKEY, 0, -1) or {}
if #earlier > 0 then
  for _, id in ipairs(earlier) do
    local h = redis.call('HMGET', nkey(id), unpack(FIELDS))
    if h[1] == 'submitting' and h[10] == TOKEN then
      out[#out + 1] = {id, h[3] or '', h[4] or '', h[5] or '1', h[6] or '', h[7] or '0', h[8] or '', h[11] or 'normal', h[2] or ''}
    end
  end
  count('claim_replayed')
  return {out, flat_counts(), partner_final}
end
local taken = {}

-- The candidates of each lane, and which of them are still in it (one ZMSCORE per lane).
local candidates, present, cursor = {}, {}, {}
do
  local j = FIRST + 10
  for k, lane in ipairs({'high', 'normal', 'bulk'}) do
    local ids = {}
    for _ = 1, tonumber(ARGV[FIRST + 6 + k]) do ids[#ids + 1] = ARGV[j]; j = j + 1 end
    candidates[lane], cursor[lane] = ids, 1
    for _, scores in ipairs(call_chunked(1000, ids, 'ZMSCORE', LANE[lane])) do
      for _, score in ipairs(scores) do present[#present + 1] = score ~= false end
    end
  end
end
local offset = {high = 0, normal = #candidates.high, bulk = #candidates.high + #candidates.normal}

local function take(lane, want)
  local claimed = 0
  local ids = candidates[lane]
  while claimed < want and cursor[lane] <= #ids do
    local c = cursor[lane]
    cursor[lane] = c + 1
    if present[offset[lane] + c] then
      local id = ids[c]
      zrem_later(LANE[lane], id)
      local key = nkey(id)
      local h = redis.call('HMGET', key, unpack(TAKE_FIELDS))
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
          local attempts = int_s((tonumber(h[5] or '0') or 0) + 1)
          transition(id, key, 'submitting', h[8], {'attempts', attempts, 'claim', TOKEN},
            {'attempt', attempts})
          zadd_later(INFLIGHT, LEASE_DEADLINE, id)
          taken[#taken + 1] = id
          out[#out + 1] = {id, h[3] or '', h[4] or '', attempts, h[6] or '', h[7] or '0', h[8] or '', lane, h[2] or ''}
          claimed = claimed + 1
        end
      else
        count('stale_lane_entry')
      end
    end
  end
  total = total + claimed
  return claimed
end

take('high', QUOTA.high)
take('normal', QUOTA.normal)
take('bulk', QUOTA.bulk)
take('high', n - total)
take('normal', n - total)
take('bulk', n - total)
call_chunked(1000, taken, 'RPUSH', CLAIMKEY)
if #taken > 0 then redis.call('EXPIRE', CLAIMKEY, math.ceil(2 * lease)) end
flush_sorted_sets()
return {out, flat_counts(), partner_final}
