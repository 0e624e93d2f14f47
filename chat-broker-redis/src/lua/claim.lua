-- Claims dead nodes for a sweep: nodes whose deadline passed get a new one, the lease, so that
-- no other node sweeps them meanwhile, and another does if this one dies before it finishes.
-- KEYS[1] the live nodes, KEYS[2] the swept nodes (pruned here of entries over ten minutes
-- old). ARGV[1] the lease (ms). Returns {lease deadline, node...} (at most 16 nodes).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 600000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local lease = now + tonumber(ARGV[1])
local reply = {lease}
for _, node in ipairs(dead) do
  redis.call('ZADD', KEYS[1], lease, node)
  reply[#reply + 1] = node
end
return reply
