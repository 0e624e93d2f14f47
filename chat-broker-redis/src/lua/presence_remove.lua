-- Removes a session from a room's presence (same KEYS and ARGV as presence_add).
-- Returns 1 when it was the user's last session in the room.
redis.call('HDEL', KEYS[3], ARGV[3])
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
  redis.call('HDEL', KEYS[2], user)
  return 1
end
return 0
