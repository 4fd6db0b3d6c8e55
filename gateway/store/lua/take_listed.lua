-- take_listed(key, upto, ids): the members of `ids` still in sorted set `key` with a score
-- at or before `upto`, removed from it; the others are left alone.  The caller read the
-- due members beforehand (ZRANGEBYSCORE) and declared what they touch: a script may not
-- pick unknown members itself.  Between that read and the script, another process may
-- have taken a member, or renewed its score (a lease): those are not taken.
-- What the scheduled, in-flight and awaiting-receipt sweeps each take.
-- include: call_chunked.lua
local function take_listed(key, upto, ids)
  local due, k, limit = {}, 0, tonumber(upto)
  for _, scores in ipairs(call_chunked(1000, ids, 'ZMSCORE', key)) do
    for _, score in ipairs(scores) do
      k = k + 1
      if score and tonumber(score) <= limit then due[#due + 1] = ids[k] end
    end
  end
  call_chunked(1000, due, 'ZREM', key)
  return due
end
