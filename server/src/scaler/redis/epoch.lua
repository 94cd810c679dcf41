-- Every script's start: reads the channel's epoch, or creates it from ARGV[1] (a fresh epoch)
-- with expiry ARGV[2] (ms). An empty ARGV[1] means a Store seeds the channel instead: the
-- script then returns UNSEEDED (its own reply with an empty epoch) and changes nothing.
--
-- KEYS: epoch, seq, stream.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  if ARGV[1] == '' then return UNSEEDED end
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
