-- Claim up to n queued notifications for submission, high lane first, with a reserve
-- offered to normal and bulk.
-- ARGV (after the ledger header): n, reserve, lease seconds, quiet-hours end (0: not in
-- quiet hours), budget (lane entries to look at), token, claim list key.
-- Guarantees: each claimed notification is submitting, in the in-flight set under a lease
-- and listed under the token; expired ones end expired, quiet-hours ones go back to
-- scheduled.  The same token again returns what that claim holds and takes nothing new.
-- include: ledger.lua
local n = tonumber(ARGV[FIRST])
local reserve = tonumber(ARGV[FIRST + 1])
local lease = tonumber(ARGV[FIRST + 2])
local QUIET = ARGV[FIRST + 3]
local quiet = tonumber(QUIET)
local budget = tonumber(ARGV[FIRST + 4])
local TOKEN, CLAIMKEY = ARGV[FIRST + 5], ARGV[FIRST + 6]
local out = {}
local total = 0
local FIELDS = {'state', 'expires_at', 'to', 'text', 'attempts', 'failed_carriers', 'accepted_at', 'type',
  'quiet_hours', 'claim', 'priority'}

-- The same token again: the caller never saw this claim's reply (a connection lost, or
-- redis-py retrying the call).  Give back what that claim took and still holds (not
-- recovered after its lease, not claimed since by another token), and claim nothing new.
local earlier = redis.call('LRANGE', CLAIMKEY, 0, -1)
if #earlier > 0 then
  for _, id in ipairs(earlier) do
    local h = redis.call('HMGET', nkey(id), unpack(FIELDS))
    if h[1] == 'submitting' and h[10] == TOKEN then
      out[#out + 1] = {id, h[3] or '', h[4] or '', h[5] or '1', h[6] or '', h[7] or '0', h[8] or '', h[11] or 'normal'}
    end
  end
  count('claim_replayed')
  return {out, flat_counts(), partner_final}
end
local taken = {}

local function take(lane, want)
  local claimed = 0
  while claimed < want and budget > 0 do
    local ask = math.min(want - claimed, budget)
    local popped = redis.call('ZPOPMIN', LANE[lane], ask)
    budget = budget - #popped / 2
    for k = 1, #popped, 2 do
      local id = popped[k]
      local key = nkey(id)
      local h = redis.call('HMGET', key, unpack(FIELDS))
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
          local attempts = (tonumber(h[5] or '0') or 0) + 1
          transition(id, key, 'submitting', h[8], {'attempts', tostring(attempts), 'claim', TOKEN},
            {'attempt', tostring(attempts)})
          zadd_later(INFLIGHT, now + lease, id)
          taken[#taken + 1] = id
          out[#out + 1] = {id, h[3] or '', h[4] or '', tostring(attempts), h[6] or '', h[7] or '0', h[8] or '', lane}
          claimed = claimed + 1
        end
      else
        count('stale_lane_entry')
      end
    end
    if #popped < 2 * ask then break end
  end
  total = total + claimed
  return claimed
end

take('high', n - 2 * reserve)
take('normal', reserve)
take('bulk', reserve)
take('high', n - total)
take('normal', n - total)
take('bulk', n - total)
call_chunked(1000, taken, 'RPUSH', CLAIMKEY)
if #taken > 0 then redis.call('EXPIRE', CLAIMKEY, math.ceil(2 * lease)) end
flush_sorted_sets()
return {out, flat_counts(), partner_final}
