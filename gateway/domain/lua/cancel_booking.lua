-- Cancel an exam booking, give the seat back and claim the cancellation SMS, atomically.
-- Reply: {outcome or status, claimed (1: the caller must queue the notification), the
-- plan's cancel_deadline, the booking's HGETALL as a flat list}.
-- KEYS[1] booking hash, KEYS[2] exam plan hash, KEYS[3] booking history list,
-- KEYS[4] the plan's cancel-unnotified set; all four share the hash tag {plan:<id>}.
-- ARGV[1] now (Unix seconds), ARGV[2] cancelled_at (whole seconds), ARGV[3] channel,
-- ARGV[4] history entry (JSON), ARGV[5] notification claim expiry, ARGV[6] booking number,
-- ARGV[7] request id
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'NOT_FOUND', 0, '', {}}
end
local deadline = redis.call('HGET', KEYS[2], 'cancel_deadline')
if not deadline or not tonumber(deadline) then
  return redis.error_reply('CORRUPT exam plan missing or without a numeric cancel_deadline')
end
local now = tonumber(ARGV[1])
local outcome, claimed = nil, 0
if status == 'cancelled' and redis.call('HGET', KEYS[1], 'cancel_request') == ARGV[7] then
  -- The same request again (a client retry after a lost reply, an MO replayed after a
  -- crash): the same answer, and the claim if the SMS is still owed; whoever held the
  -- claim was this request's earlier run.
  outcome = 'CANCELLED'
  if redis.call('HGET', KEYS[1], 'notified') == '0' then
    redis.call('HSET', KEYS[1], 'notify_claim_until', ARGV[5])
    claimed = 1
  end
elseif status == 'cancelled' then
  outcome = 'ALREADY_CANCELLED'
  -- Cancelled earlier but the SMS never queued (the process died after this script):
  -- hand the job to this caller unless another one holds a live claim.
  if redis.call('HGET', KEYS[1], 'notified') == '0' then
    local held = tonumber(redis.call('HGET', KEYS[1], 'notify_claim_until') or '0') or 0
    if held <= now then
      redis.call('HSET', KEYS[1], 'notify_claim_until', ARGV[5])
      claimed = 1
    end
  end
elseif status ~= 'booked' then
  outcome = 'NOT_BOOKED'
elseif now >= tonumber(deadline) then
  outcome = 'DEADLINE_PASSED'
else
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', ARGV[2],
             'cancelled_via', ARGV[3], 'notified', '0', 'notify_claim_until', ARGV[5],
             'cancel_request', ARGV[7])
  -- Give the seat back, never above the total: a plan already full of free seats means
  -- the core system rebuilt the counts, and inventing a seat would overbook the session.
  local left = tonumber(redis.call('HGET', KEYS[2], 'seats_left'))
  local total = tonumber(redis.call('HGET', KEYS[2], 'seats_total'))
  if left and total and left < total then
    redis.call('HINCRBY', KEYS[2], 'seats_left', 1)
  end
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[6])
  outcome, claimed = 'CANCELLED', 1
end
return {outcome, claimed, deadline, redis.call('HGETALL', KEYS[1])}
