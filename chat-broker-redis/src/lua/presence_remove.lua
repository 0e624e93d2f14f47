-- Removes a session from a room's presence (the node removes it from its registry after).
-- KEYS[1] room sessions, KEYS[2] room users. ARGV[1] session; ARGV[2] the room's channel and
-- ARGV[3] the command that publishes on it, to announce here that the user left when this was
-- their last session (a sweep of a dead node's sessions), or '' to leave that to the caller.
-- Returns 1 when it was the user's last session in the room.
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
  redis.call('HDEL', KEYS[2], user)
  if ARGV[2] ~= '' then redis.call(ARGV[3], ARGV[2], 'L\n' .. user) end
  return 1
end
return 0
