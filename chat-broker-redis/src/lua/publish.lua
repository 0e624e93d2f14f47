-- Publishes one stored message atomically (after the epoch prologue).
-- KEYS[4] (optional) idempotency key.
-- ARGV[6] channel, ARGV[7] from, ARGV[8] ts, ARGV[9] body, ARGV[10] maxlen, ARGV[11] idempotency
-- window (ms); ARGV[2] (the new epoch's expiry) is the history's age limit.
-- Each message gets an id, Redis's clock in microseconds when it was stored ('i', also in the
-- delivery): two messages stored under one seq, before and after Redis came back older, differ.
-- A message sent with a key records the key's name ('k').
-- Returns {epoch, seq, duplicate 0|1, id (not for a duplicate)}.
if KEYS[4] then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    if sp and string.sub(prev, sp + 1) == epoch then
      -- A write, so that a node waiting for replicas (WAIT) waits for this one, and so for the
      -- message it names, which the replication stream carries before it.
      redis.call('PEXPIRE', KEYS[4], ARGV[11])
      return {epoch, tonumber(string.sub(prev, 1, sp - 1)), 1}
    end
  end
end
local seq = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = t[1] .. string.format('%06d', tonumber(t[2]))
local seqs = string.format('%d', seq)
local entry = {'XADD', KEYS[3], 'MAXLEN', ARGV[10], seqs .. '-0',
  'f', ARGV[7], 't', ARGV[8], 'b', ARGV[9], 'x', string.format('%d', now + tonumber(ARGV[2])), 'i', id}
if KEYS[4] then
  -- The idempotency key's name: a new epoch that keeps this message renumbers its key too.
  entry[#entry + 1] = 'k'
  entry[#entry + 1] = KEYS[4]
end
redis.call(unpack(entry))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
if KEYS[4] then
  redis.call('SET', KEYS[4], seqs .. ' ' .. epoch, 'PX', ARGV[11])
end
redis.call('PUBLISH', ARGV[6],
  'S' .. seqs .. ' ' .. ARGV[8] .. ' ' .. #epoch .. ' ' .. #ARGV[7] .. ' ' .. id .. '\n' .. epoch .. ARGV[7] .. ARGV[9])
return {epoch, seq, 0, tonumber(id)}
