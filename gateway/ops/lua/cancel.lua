-- Cancel one notification if it is still waiting (queued or scheduled).
--
-- KEYS[1] the notification hash        KEYS[2..4] the lanes high, normal, bulk
-- KEYS[5] the scheduled set            KEYS[6] the events stream
-- KEYS[7] the partition's step writer lock (push.ledger_engine steps: a ledger step holds
--         it between its reads and its writes)
-- ARGV[1] now (Unix seconds)  ARGV[2] notification id  ARGV[3] who  ARGV[4] why
-- ARGV[5] events stream cap (approximate MAXLEN)
--
-- Guarantees: only a notification whose state is queued or scheduled changes; it becomes
-- expired (final) with reason "cancelled by <who>: <why>", leaves its lane and the
-- scheduled set, and one notification.expired event says so.  One that a dispatcher
-- claimed meanwhile (submitting) is left alone and reported, so nothing is both
-- cancelled and sent.  Returns the state found ('' when the record is gone) and 1 when
-- cancelled, else 0; {'busy', 0} while a ledger step holds the partition (a cancellation
-- between its reads and its writes would be lost: the caller asks again).
if redis.call('EXISTS', KEYS[7]) == 1 then return {'busy', 0} end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'', 0} end
if state ~= 'queued' and state ~= 'scheduled' then return {state, 0} end
local reason = 'cancelled by ' .. ARGV[3] .. ': ' .. ARGV[4]
redis.call('HSET', KEYS[1], 'state', 'expired', 'expired_at', ARGV[1], 'reason', reason,
           'cancelled_by', ARGV[3])
for i = 2, 5 do redis.call('ZREM', KEYS[i], ARGV[2]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'type', 'notification.expired',
           'id', ARGV[2], 'reason', reason, 'cancelled', '1')
return {state, 1}
