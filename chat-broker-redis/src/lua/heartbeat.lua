-- A node says it is alive. KEYS[1] the live nodes (node -> deadline, ms), KEYS[2] the nodes
-- swept as dead (node -> when). ARGV[1] node, ARGV[2] lifetime (ms).
-- Returns 0 when the node was known, 1 when it was not (first beat, or Redis lost its data),
-- 2 when it had been swept as dead: the node must register its presence again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) == 0
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then return 2 end
if known then return 0 end
return 1
