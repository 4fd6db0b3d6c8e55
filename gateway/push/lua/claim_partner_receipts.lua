-- Claim owed partner receipts for delivery by this process (gateway/push/partners.py), so
-- that two processes with a bind of the same partner never deliver one receipt both.
-- KEYS[1] partner-receipts of one partition: ids scored by when they may be delivered
-- (the final state's time; while claimed, the end of the claim).
-- ARGV: now, claim_until, then the ids (chosen by the caller with ZRANGEBYSCORE; those
-- claimed or delivered meanwhile are skipped).
-- Returns the ids claimed.  A claim of a process that died runs out at claim_until, and
-- the receipt is delivered by another: a second delivery only if the first was made and
-- not yet recorded.
local claimed = {}
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    claimed[#claimed + 1] = ARGV[i]
  end
end
return claimed
