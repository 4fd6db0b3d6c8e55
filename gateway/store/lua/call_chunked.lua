-- redis.call(cmd, ..., list items) a chunk of `size` items at a time (unpack and the Lua
-- stack cap how many arguments one call takes); returns the replies in order.
local function call_chunked(size, list, cmd, ...)
  local replies = {}
  for k = 1, #list, size do
    local args = {cmd, ...}
    for j = k, math.min(k + size - 1, #list) do args[#args + 1] = list[j] end
    replies[#replies + 1] = redis.call(unpack(args))
  end
  return replies
end
