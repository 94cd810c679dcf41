-- Atomic per channel: reads or creates the epoch, takes the next seq, appends to the stream,
-- refreshes the three keys' expiry together, publishes the full record.
--
-- KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms), max stream length, pub/sub channel,
-- topic, msg (raw JSON).
local seq = redis.call('INCR', KEYS[2])
local s = string.format('%d', seq)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], s .. '-0', 't', ARGV[5], 'm', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], '{"e":' .. cjson.encode(epoch) .. ',"s":' .. s ..
  ',"t":' .. cjson.encode(ARGV[5]) .. ',"m":' .. ARGV[6] .. '}')
return {epoch, seq}
