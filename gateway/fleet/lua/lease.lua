-- lease.lua: take, renew or hold a lease among at most N holders (bind leases of a
-- carrier account, call slots of a voice trunk), fleet-wide.
--
-- KEYS[1]  sorted set of holders scored by lease expiry (Redis-clock milliseconds),
--          e.g. 12123:{acct:cmcc}:binds or 12123:{trunk:PJSIP-carrier-trunk}:calls.
-- ARGV[1]  holder name (host-pid-what, e.g. gw1-4242-cmcc-transceiver-0).
-- ARGV[2]  lease time in milliseconds.
-- ARGV[3]  most holders at once (N).
-- ARGV[4]  mode: 'acquire' (a new holder only while fewer than N hold), 'renew' (a
--          holder whose lease has not expired, or whose lapsed place nobody has taken:
--          fewer than N hold), 'hold' (add or renew whatever the count: a call that
--          exists already, adopted after a restart).
--
-- A lapsed lease is renewed while there is room because a live holder's lease lapses
-- without its process stopping when Redis's clock steps forward (a failover to a host
-- whose clock is ahead: every lease at once) or Redis lost the set; refusing it then
-- dropped every bind of the fleet at once, with its submits on the wire (sent again).
-- The holder's own fence (gateway/fleet/leases.py) still bounds how long it holds
-- without a renewal, and a place taken meanwhile is not given back.
--
-- Returns {1 or 0 (granted), holders now}.
--
-- Guarantees: expired holders are removed first, so a holder that stopped renewing (its
-- process died) frees its place after at most the lease time; in 'acquire' and 'renew'
-- modes the set never holds more than N live holders.  The clock is Redis's TIME.
redis.replicate_commands()  -- TIME before a write (Redis 6; a no-op on Redis 7)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local mode = ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if mode ~= 'hold' and count >= tonumber(ARGV[3]) then
    return {0, count}
  end
  count = count + 1
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The set vanishes when its last lease would have expired.
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, count}
