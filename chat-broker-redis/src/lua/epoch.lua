-- Prologue shared by the room scripts: makes sure the room has an epoch, and that its history
-- is the one the nodes know.
-- KEYS[1] epoch, KEYS[2] seq, KEYS[3] stream; ARGV[1] how to start over (below), ARGV[2] the
-- epoch's expiry (ms), ARGV[3] the epoch the calling node knows ('' if none), ARGV[4] the newest
-- seq it delivered or stored in that epoch, ARGV[5] that message's id (its 'i' field; '' if
-- unknown).
-- ARGV[1] is a random name part for a new epoch; or '?' from a node with an origin (the
-- engine's store) that has not asked it yet: the script then fails with ORIGIN instead of
-- starting over, and the node asks and runs it again with '@<seq>@<epoch>@<random name part>',
-- where the origin has the room. The room then goes on there, in that epoch (its stream,
-- which the origin holds, is dropped), unless the origin is behind what the calling node
-- delivered: then a new epoch starts, as without an origin. Going on from the origin also
-- restores the idempotency keys of the origin's recent messages, so that a resend after the
-- loss gets its original seq: they follow the position after a newline, each as
-- '<name length>:<seq>:<ms left>:<name>' (none after the newline: the origin has none). A
-- position without the newline (a node that asked before knowing whether the room was lost)
-- fails with ORIGIN too, when the room does go on from there: the node asks for the keys and
-- runs the script again.
-- An epoch is named 'e<16 digits: Redis's clock in microseconds when it began>-<random>', so
-- of two epochs the later one is known.
-- The history was lost, and a new epoch starts (holding what is left of the old history,
-- renumbered from 1), when the epoch is missing; when the seq is missing but the stream is not,
-- or the stream is missing though the seq says messages were stored (a key evicted or
-- deleted); when the seq is behind what a node already delivered in this epoch (Redis came
-- back older: restarted from a snapshot, or failed over to a replica that missed writes); when
-- the message stored at that seq is not the one the node delivered (Redis came back older and
-- another node, which was behind, has stored new messages under the same seqs since); or when
-- Redis holds an epoch older than the one the node knows (Redis came back older, to an epoch
-- the room had already left: going back to it would hand out its seqs a second time).
-- Every room script runs this first, so the first call of any node that knows better makes
-- the new epoch, atomically, before anything is stored or read.
local epoch = redis.call('GET', KEYS[1])
local stored = redis.call('GET', KEYS[2])
local has_stream = redis.call('EXISTS', KEYS[3]) == 1
local function diverged()
  if ARGV[5] == '' then return false end
  local at = redis.call('XRANGE', KEYS[3], ARGV[4] .. '-0', ARGV[4] .. '-0')
  if #at == 0 then return false end -- trimmed: nothing to compare
  local f = at[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'i' then return f[i + 1] ~= ARGV[5] end
  end
  return false
end
local function born(e)
  return string.match(e, '^e(%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d)%-')
end
local function older_than_known()
  if not epoch or epoch == ARGV[3] then return false end
  local now, known = born(epoch), born(ARGV[3])
  return now ~= nil and known ~= nil and now < known
end
local start, origin_epoch, origin_seq, origin_keys = ARGV[1], nil, nil, nil
if string.sub(start, 1, 1) == '@' then
  local newline = string.find(start, '\n', 1, true)
  if newline then
    origin_keys = string.sub(start, newline + 1)
    start = string.sub(start, 1, newline - 1)
  end
  local at, name, rest = string.match(start, '^@(%d+)@([^@]+)@(.*)$')
  origin_seq, origin_epoch, start = tonumber(at), name, rest
end
-- The origin lacks messages the calling node delivered: it cannot be where the room stands.
local function origin_behind()
  if ARGV[3] == '' then return false end
  if ARGV[3] == origin_epoch then return tonumber(ARGV[4]) > origin_seq end
  local theirs, mine = born(origin_epoch), born(ARGV[3])
  return theirs ~= nil and mine ~= nil and theirs < mine
end
-- Redis holds less than the origin has kept (it came back older, and no node knew better).
local function behind_origin()
  if not origin_epoch or not epoch then return false end
  if epoch == origin_epoch then return tonumber(stored or '0') < origin_seq end
  local mine, theirs = born(epoch), born(origin_epoch)
  return mine ~= nil and theirs ~= nil and mine < theirs
end
local lost = (not epoch)
  or older_than_known()
  or ((not stored) and has_stream)
  or (stored and tonumber(stored) > 0 and not has_stream)
  or (epoch == ARGV[3] and tonumber(stored or '0') < tonumber(ARGV[4]))
  or (epoch == ARGV[3] and diverged())
  or behind_origin()
local from_origin = lost and origin_epoch and not origin_behind()
if lost and (start == '?' or (from_origin and not origin_keys)) then
  return redis.error_reply('ORIGIN the room must go on where the store has it')
end
if from_origin then
  epoch = origin_epoch
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
  if origin_seq > 0 then redis.call('SET', KEYS[2], origin_seq, 'PX', ARGV[2]) end
  local at = 1
  while at <= #origin_keys do
    local len, seq, left, name_at = string.match(origin_keys, '^(%d+):(%d+):(%d+):()', at)
    if not len then return redis.error_reply('ERR malformed origin keys') end
    local name = string.sub(origin_keys, name_at, name_at + tonumber(len) - 1)
    redis.call('SET', name, seq .. ' ' .. epoch, 'PX', left)
    at = name_at + tonumber(len)
  end
elseif lost then
  local t = redis.call('TIME')
  epoch = 'e' .. t[1] .. string.format('%06d', tonumber(t[2])) .. '-' .. start
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  -- The messages Redis still holds begin the new epoch, renumbered from 1: what it lost is
  -- announced by the new epoch, and nothing it kept is dropped (messages stored after it came
  -- back older, by a node that did not know better and answered `sent`, included).
  local kept = {}
  if has_stream then
    -- Past their age ('x', ms) entries are history no longer, whichever key expired first.
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    for _, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
      local f, young = entry[2], true
      for i = 1, #f, 2 do
        if f[i] == 'x' and tonumber(f[i + 1]) <= now then young = false end
      end
      if young then kept[#kept + 1] = entry end
    end
  end
  redis.call('DEL', KEYS[2], KEYS[3])
  for n, entry in ipairs(kept) do
    local seq = string.format('%d', n)
    local add = {'XADD', KEYS[3], seq .. '-0'}
    local f = entry[2]
    for i = 1, #f, 2 do
      add[#add + 1] = f[i]
      add[#add + 1] = f[i + 1]
      -- Its idempotency key, if still remembered, now names it in the new epoch: a resend
      -- is not stored a second time.
      if f[i] == 'k' then
        local ttl = redis.call('PTTL', f[i + 1])
        if ttl > 0 then redis.call('SET', f[i + 1], seq .. ' ' .. epoch, 'PX', ttl) end
      end
    end
    redis.call(unpack(add))
  end
  if #kept > 0 then
    redis.call('SET', KEYS[2], #kept, 'PX', ARGV[2])
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
end
