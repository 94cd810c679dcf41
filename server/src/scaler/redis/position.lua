-- The channel's head; creates its epoch if it has none, so the answer is stable.
--
-- KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms).
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
