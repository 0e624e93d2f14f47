-- Stores a batch of one room's messages atomically, in order (after the epoch prologue), and
-- publishes them on the room's channel in one pub/sub message.
-- ARGV[6] channel, ARGV[7] maxlen, ARGV[8] idempotency window (ms), ARGV[9] the command that
-- publishes (PUBLISH, or SPUBLISH on a cluster: the channel is in the room's slot); then four
-- arguments per message: from, ts, body, and the index in KEYS of its idempotency key ('' for none; KEYS[4]
-- on are the batch's keys). ARGV[2] (the new epoch's expiry) is the history's age limit.
-- Each message gets an id, Redis's clock in microseconds when its batch was stored plus its
-- place in the batch ('i', also in the delivery): two messages stored under one seq, before
-- and after Redis came back older, differ. A message sent with a key records the key's name
-- ('k'). A key already naming a message of this epoch (sent before, or earlier in this batch)
-- makes the message a duplicate: not stored again, answered with the original's seq.
-- The room's keys are refreshed and the stream trimmed once per batch, not per message: what
-- makes a batch of n cheaper than n calls.
-- Returns {epoch, then per message: seq, duplicate 0|1, id (0 for a duplicate)}.
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expires = string.format('%d', now + tonumber(ARGV[2]))
local reply, payload = {epoch}, {}
for a = 10, #ARGV, 4 do
  local from, ts, body, k = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local key = nil
  if k ~= '' then key = KEYS[tonumber(k)] end
  local dup = nil
  if key then
    local prev = redis.call('GET', key)
    if prev then
      local sp = string.find(prev, ' ', 1, true)
      if sp and string.sub(prev, sp + 1) == epoch then
        -- A write, so that a node waiting for replicas (WAIT) waits for this one, and so for
        -- the message it names, which the replication stream carries before it.
        redis.call('PEXPIRE', key, ARGV[8])
        dup = tonumber(string.sub(prev, 1, sp - 1))
      end
    end
  end
  if dup then
    reply[#reply + 1] = dup
    reply[#reply + 1] = 1
    reply[#reply + 1] = 0
  else
    seq = seq + 1
    local seqs = string.format('%d', seq)
    local id = string.format('%d', base + #payload)
    local entry = {'XADD', KEYS[3], seqs .. '-0', 'f', from, 't', ts, 'b', body, 'x', expires, 'i', id}
    if key then
      -- The idempotency key's name: a new epoch that keeps this message renumbers its key too.
      entry[#entry + 1] = 'k'
      entry[#entry + 1] = key
      redis.call('SET', key, seqs .. ' ' .. epoch, 'PX', ARGV[8])
    end
    redis.call(unpack(entry))
    reply[#reply + 1] = seq
    reply[#reply + 1] = 0
    reply[#reply + 1] = tonumber(id)
    payload[#payload + 1] = 'S' .. seqs .. ' ' .. ts .. ' ' .. #epoch .. ' ' .. #from .. ' ' .. id .. ' ' .. #body
      .. '\n' .. epoch .. from .. body
  end
end
if #payload > 0 then
  -- Expiries in this order (epoch, seq, stream), so the epoch never outlives the others: a room
  -- whose epoch is gone starts over (lua/epoch.lua), keeping nothing aged.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], string.format('%d', seq), 'PX', ARGV[2])
  redis.call('XTRIM', KEYS[3], 'MAXLEN', ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call(ARGV[9], ARGV[6], table.concat(payload))
end
return reply
