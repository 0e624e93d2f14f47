-- Publishes one stored message atomically (after the epoch prologue).
-- KEYS[4] (optional) idempotency key.
-- ARGV[5] channel, ARGV[6] from, ARGV[7] ts, ARGV[8] body, ARGV[9] maxlen, ARGV[10] idempotency window
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
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[9], seqs .. '-0',
  'f', ARGV[6], 't', ARGV[7], 'b', ARGV[8], 'x', string.format('%d', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if KEYS[4] then
  redis.call('SET', KEYS[4], seqs .. ' ' .. epoch, 'PX', ARGV[10])
end
redis.call('PUBLISH', ARGV[5],
  'S' .. seqs .. ' ' .. ARGV[7] .. ' ' .. #epoch .. ' ' .. #ARGV[6] .. '\n' .. epoch .. ARGV[6] .. ARGV[8])
return {epoch, seq, 0}
