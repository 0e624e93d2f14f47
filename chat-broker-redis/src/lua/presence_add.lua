-- Adds a session to a room's presence (the node has written it into its registry first, so a
-- sweep after the node's death finds it).
-- KEYS[1] room sessions (session -> user), KEYS[2] room users (user -> session count).
-- ARGV[1] session, ARGV[2] user.
-- Returns 1 when it is the user's first (only) session in the room.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then return 1 end
  return 0
end
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') == 1 then return 1 end
return 0
