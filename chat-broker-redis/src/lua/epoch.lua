-- Prologue shared by the room scripts: makes sure the room has an epoch.
-- KEYS[1] epoch, KEYS[2] seq, KEYS[3] stream; ARGV[1] a fresh epoch, ARGV[2] its expiry (ms).
-- A missing epoch, or a stream whose seq key vanished, means the history was lost: a new epoch
-- starts and whatever is left of the old history goes, so seq restarts at 1.
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or ((not redis.call('GET', KEYS[2])) and redis.call('EXISTS', KEYS[3]) == 1) then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
