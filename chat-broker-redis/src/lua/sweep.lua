-- Removes dead nodes' sessions from presence and tells each room's nodes which users left.
-- KEYS[1] the nodes zset. ARGV[1] key prefix, ARGV[2] one node to remove now (detach) or ''.
-- Key and channel names are built here, as keys.rs builds them. Returns how many users left.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead
if ARGV[2] ~= '' then
  dead = {ARGV[2]}
else
  dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
end
local left = 0
for _, node in ipairs(dead) do
  local registry = prefix .. 'node:' .. node
  local entries = redis.call('HGETALL', registry)
  for i = 1, #entries, 2 do
    local field = entries[i]
    local sp = string.find(field, ' ', 1, true)
    if sp then
      local room = string.sub(field, 1, sp - 1)
      local session = string.sub(field, sp + 1)
      local sessions = prefix .. '{' .. room .. '}:ps'
      local users = prefix .. '{' .. room .. '}:pu'
      local user = redis.call('HGET', sessions, session)
      if user then
        redis.call('HDEL', sessions, session)
        if redis.call('HINCRBY', users, user, -1) <= 0 then
          redis.call('HDEL', users, user)
          redis.call('PUBLISH', prefix .. 'chan:' .. room, 'L\n' .. user)
          left = left + 1
        end
      end
    end
  end
  redis.call('DEL', registry)
  redis.call('ZREM', KEYS[1], node)
  if ARGV[2] == '' then
    redis.call('SET', prefix .. 'swept:' .. node, '1', 'PX', 600000)
  end
end
return left
