-- Publishes one stored message atomically (after the epoch prologue).
-- KEYS[4] (optional) idempotency key.
-- ARGV[3] channel, ARGV[4] from, ARGV[5] ts, ARGV[6] body, ARGV[7] maxlen, ARGV[8] idempotency window
-- (ms); ARGV[2] (the new epoch's expiry) is the history's age limit.
-- Returns {epoch, seq, duplicate 0|1}.
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    if sp and string.sub(prev, sp + 1) == epoch then
      return {epoch, tonumber(string.sub(prev, 1, sp - 1)), 1}
    end
  end
end
local seq = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seqs = string.format('%d', seq)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[7], seqs .. '-0',
  'f', ARGV[4], 't', ARGV[5], 'b', ARGV[6], 'x', string.format('%d', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if KEYS[4] then
  redis.call('SET', KEYS[4], seqs .. ' ' .. epoch, 'PX', ARGV[8])
end
redis.call('PUBLISH', ARGV[3],
  'S' .. seqs .. ' ' .. ARGV[5] .. ' ' .. #epoch .. ' ' .. #ARGV[4] .. '\n' .. epoch .. ARGV[4] .. ARGV[6])
return {epoch, seq, 0}
