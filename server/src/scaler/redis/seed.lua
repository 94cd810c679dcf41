-- Seeds a channel Redis has no state for with a Store's head, unless another instance
-- seeded it first. Returns the channel's head and whether this seed was applied.
--
-- KEYS: epoch, seq, stream. ARGV: epoch, seq, ttl (ms).
local epoch = redis.call('GET', KEYS[1])
if epoch then return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0'), 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return {ARGV[1], tonumber(ARGV[2]), 1}
