-- Adds a session to a room's presence.
-- KEYS[1] room sessions (session -> user), KEYS[2] room users (user -> session count),
-- KEYS[3] the node's registry ("<room> <session>" -> user).
-- ARGV[1] session, ARGV[2] user, ARGV[3] registry field.
-- Returns 1 when it is the user's first (only) session in the room.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then return 1 end
  return 0
end
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') == 1 then return 1 end
return 0
