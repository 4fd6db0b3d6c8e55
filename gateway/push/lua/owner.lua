-- owner.lua: take, renew or release the lease on one partition.
--
-- KEYS[1]  the partition's owner key (keys.partition(k).owner, 12123:{p7}:owner): in the
--          partition's slot, so that it moves (and fails over) with the work it governs.
-- ARGV[1]  the consumer name asking.
-- ARGV[2]  'hold' (take it if free, renew it if ours) or 'release' (delete it if ours).
-- ARGV[3]  lease in milliseconds ('hold').
--
-- Returns the owner after the call: ARGV[1] when held, another name when someone else
-- holds it, '' when free (after a release).  Guarantees: at most one owner per partition
-- at any moment of Redis time; a lease nobody renews frees after ARGV[3] ms.
local owner = redis.call('GET', KEYS[1])
if ARGV[2] == 'release' then
  if owner == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return ''
  end
  return owner or ''
end
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
  return ARGV[1]
end
return owner
