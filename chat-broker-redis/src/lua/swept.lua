-- Ends a sweep of a node whose sessions are gone from presence. KEYS[1] the live nodes, KEYS[2]
-- the swept nodes. ARGV[1] node; ARGV[2] the lease it was claimed with, or '' for a node that
-- detached (it is simply gone).
-- A claimed node is recorded as swept, so that if it was alive after all (stalled past its
-- deadline) it registers its sessions again on its next beat; it stays among the live nodes if
-- it beat meanwhile (its deadline is no longer the lease).
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000, ARGV[1])
return 1
