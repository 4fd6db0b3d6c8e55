-- gcra.lua: reserve send slots of one carrier account, fleet-wide (GCRA, reservation form).
--
-- KEYS[1]  the account's theoretical arrival time (TAT): a string of Redis-clock
--          microseconds, e.g. 12123:{acct:cmcc}:gcra.  One key, so the script runs on
--          Redis Cluster too (the account's hash tag picks the slot).
-- ARGV[1]  emission interval in microseconds: 1e6 / account_tps, rounded up.
-- ARGV[2]  slots wanted (>= 1).
-- ARGV[3]  horizon in microseconds: no slot is granted later than now + horizon.
--
-- Returns {granted, first_offset_us, interval_us, retry_after_us}: `granted` slots at
-- now + first_offset + i * interval (i = 0 .. granted-1), on the Redis clock;
-- retry_after_us says when to ask again when granted is 0.
--
-- Guarantees: every slot ever granted for the account is at least one interval after
-- the previous one, whichever process asked, so the slots of any 1 s window number at
-- most account_tps + 1.  Idle time is not banked (TAT never lags behind now): no
-- burst after a quiet spell.  The clock is Redis's TIME, one clock for every host.
redis.replicate_commands()  -- TIME before a write (Redis 6; a no-op on Redis 7)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = 0
if tat <= now + horizon then room = math.floor((now + horizon - tat) / interval) + 1 end
local granted = math.min(wanted, room)
if granted < 1 then
  return {0, 0, interval, tat - now - horizon}
end
local new_tat = tat + granted * interval
-- The key outlives its last slot by a second, then vanishes (an idle account costs nothing).
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {granted, tat - now, interval, 0}
