-- Erases messages from a room's history: their body field goes, their entry (seq, sender,
-- time, id) stays, a tombstone. Stream entries cannot be edited, so the stream is written
-- again, entry by entry under the same ids, without those bodies: at most the room's window
-- (history_size entries), and erasure is rare. The stream keeps its expiry.
-- KEYS[1] the room's stream. ARGV[1] 's' to erase the message at seq ARGV[2], or 'u' every
-- message sent by user ARGV[2]. Returns how many messages lost their body.
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local function picked(id, f)
  if ARGV[1] == 's' then return id == ARGV[2] .. '-0' end
  for i = 1, #f, 2 do
    if f[i] == 'f' then return f[i + 1] == ARGV[2] end
  end
  return false
end
local erased = 0
for _, e in ipairs(entries) do
  if picked(e[1], e[2]) then
    for i = 1, #e[2], 2 do
      if e[2][i] == 'b' then erased = erased + 1 end
    end
  end
end
if erased == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for _, e in ipairs(entries) do
  local add = {'XADD', KEYS[1], e[1]}
  local erase = picked(e[1], e[2])
  for i = 1, #e[2], 2 do
    if not (erase and e[2][i] == 'b') then
      add[#add + 1] = e[2][i]
      add[#add + 1] = e[2][i + 1]
    end
  end
  redis.call(unpack(add))
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return erased
