-- trim_intake(stream, group): after the group acknowledged entries, trim the intake
-- stream below the first entry the group still needs: its oldest pending entry (read by
-- a consumer, not yet acknowledged), else the one after the last it was given.  XTRIM
-- MINID drops whole stream nodes at once, where an XDEL per entry looked each one up
-- (6.3 -> 4.0 us per entry with its XREADGROUP, 2026-12-02).  An entry another consumer
-- holds keeps itself and what follows it until it is acknowledged; unread entries stay.
-- Other groups on the stream are not waited for (as XDEL did not).
local function first_needed(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, last
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then last = g[k + 1] end
    end
    if name == group then
      local pending = redis.call('XPENDING', stream, group)
      if pending[2] then return pending[2] end
      local ms, seq = string.match(last, '^(%d+)-(%d+)$')
      if not seq or #seq > 14 then return last end  -- beyond exact Lua numbers: keep the last
      return ms .. '-' .. tostring(tonumber(seq) + 1)
    end
  end
  return nil
end

local function trim_intake(stream, group)
  local bound = first_needed(stream, group)
  if bound then redis.call('XTRIM', stream, 'MINID', bound) end
end
