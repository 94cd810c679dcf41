-- Atomic per channel: reads or creates the epoch, takes the next seq, appends to the stream,
-- refreshes the three keys' expiry together, publishes the full record.
--
-- KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms), max stream length, pub/sub channel,
-- topic, msg (raw JSON), record id, publish command (PUBLISH, or SPUBLISH on a Redis Cluster).
--
-- Each record carries a unique id (ARGV[7], kept in the stream): an instance that delivered
-- seq N with another id than the N it sees now knows the history forked (a failover lost writes
-- it had delivered) and ends the epoch instead of leaving a silent gap. See `Cursor` in mod.rs.
local seq = redis.call('INCR', KEYS[2])
local s = string.format('%d', seq)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], s .. '-0', 't', ARGV[5], 'm', ARGV[6], 'i', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call(ARGV[8], ARGV[4], '{"e":' .. cjson.encode(epoch) .. ',"s":' .. s ..
  ',"i":' .. cjson.encode(ARGV[7]) ..
  ',"t":' .. cjson.encode(ARGV[5]) .. ',"m":' .. ARGV[6] .. '}')
return {epoch, seq}
