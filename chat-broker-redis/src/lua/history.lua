-- A page of history (after the epoch prologue).
-- ARGV[6] 'f' (XRANGE, oldest first), 'b' (XREVRANGE, newest first) or 'n' (no messages);
-- ARGV[7] lowest id, ARGV[8] highest id (both inclusive), ARGV[9] count.
-- Entries past their age ('x' field, ms) are deleted from the front first.
-- Returns {epoch, latest seq, entries}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local head = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 16)
  local expired = 0
  for _, e in ipairs(head) do
    local f, x = e[2], nil
    for i = 1, #f, 2 do
      if f[i] == 'x' then x = tonumber(f[i + 1]) end
    end
    if x and x <= now then
      redis.call('XDEL', KEYS[3], e[1])
      expired = expired + 1
    else
      break
    end
  end
  if expired < 16 then break end
end
local entries = {}
if ARGV[6] == 'f' then
  entries = redis.call('XRANGE', KEYS[3], ARGV[7], ARGV[8], 'COUNT', ARGV[9])
elseif ARGV[6] == 'b' then
  entries = redis.call('XREVRANGE', KEYS[3], ARGV[8], ARGV[7], 'COUNT', ARGV[9])
end
return {epoch, redis.call('GET', KEYS[2]) or '0', entries}
