-- Ends a channel's epoch (if it is still ARGV[1]) and starts ARGV[2] at seq 0. Returns the
-- channel's epoch afterwards (empty if Redis has none).
--
-- KEYS: epoch, seq, stream. ARGV: epoch to end, fresh epoch, ttl (ms).
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then return epoch or '' end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], '0', 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return ARGV[2]
