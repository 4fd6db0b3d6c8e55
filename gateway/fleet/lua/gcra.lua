-- gcra.lua: reserve send slots of one carrier account, fleet-wide (GCRA, reservation form).
--
-- KEYS[1]  the account's theoretical arrival time (TAT) and the run id of the server that
--          wrote it: "<Redis-clock microseconds> <run_id>", e.g. 12123:{acct:cmcc}:gcra.
--          One key, so the script runs on Redis Cluster too (the account's hash tag picks
--          the slot).
-- ARGV[1]  emission interval in microseconds: 1e6 / account_tps, rounded up.
-- ARGV[2]  slots wanted (>= 1).
-- ARGV[3]  horizon in microseconds: no slot is granted later than now + horizon.
--
-- Returns {granted, first_offset_us, interval_us, retry_after_us, fenced}: `granted`
-- slots at now + first_offset + i * interval (i = 0 .. granted-1), on the Redis clock;
-- retry_after_us says when to ask again when granted is 0; fenced is 1 when the TAT
-- was written by another server (see below).
--
-- Guarantees: every slot ever granted for the account is at least one interval after
-- the previous one, whichever process asked, so the slots of any 1 s window number at
-- most account_tps + 1.  Idle time is not banked (TAT never lags behind now): no
-- burst after a quiet spell.  The clock is Redis's TIME, one clock for every host.
--
-- Failover: replication is asynchronous, so a replica promoted to master may hold a TAT
-- older than the slots its old master granted (measured: 478 submit_sm in one second
-- against 450, tests/integration/test_cluster.py, the master of {acct:cmcc} killed under
-- load).  A TAT written by another server (a promoted replica, a restart, a slot that
-- migrated) is therefore moved to now + horizon first: no master grants a slot later
-- than its now + horizon, so every slot granted before lies behind it.  The price is at
-- most one horizon of the account's capacity (0.1 s) per failover.
redis.replicate_commands()  -- TIME and INFO before a write (Redis 6; a no-op on Redis 7)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local me = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local stored = redis.call('GET', KEYS[1])
local tat, fenced = 0, 0
if stored then
  local value, writer = string.match(stored, '^(%d+) ?(%x*)$')
  tat = tonumber(value) or 0
  if writer ~= me then
    fenced = 1
    if tat < now + horizon then tat = now + horizon end
  end
end
if tat < now then tat = now end
local room = 0
if tat <= now + horizon then room = math.floor((now + horizon - tat) / interval) + 1 end
local granted = math.min(wanted, room)
if granted < 1 then
  -- a fenced TAT is written even without a grant: the fence must hold for the others
  if fenced == 1 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat) .. ' ' .. me, 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  return {0, 0, interval, tat - now - horizon, fenced}
end
local new_tat = tat + granted * interval
-- The key outlives its last slot by a second, then vanishes (an idle account costs nothing).
redis.call('SET', KEYS[1], string.format('%.0f', new_tat) .. ' ' .. me, 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {granted, tat - now, interval, 0, fenced}
