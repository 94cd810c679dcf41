-- Adds and removes members of one channel's presence, and announces each change on the
-- channel's pub/sub channel (where its publications go, so every instance sees one order).
--
-- KEYS[1]  the channel's presence hash: socket id -> member JSON
-- KEYS[2]  the channel's expiry index: a sorted set of socket ids by the time (ms, Redis clock)
--          the member expires unless its instance refreshes it
-- ARGV[1]  presence ttl (ms)
-- ARGV[2]  the channel's pub/sub channel
-- ARGV[3]  publish command (PUBLISH, or SPUBLISH on a Redis Cluster)
-- ARGV[4]  number of members joining, then for each its socket id and member JSON, then the
--          socket ids of the members leaving
--
-- Both keys live twice the ttl after the last change or refresh: a channel whose instances all
-- died leaves nothing behind. A leave of a member that is not there (already expired and
-- swept) announces nothing.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local i = 5
for _ = 1, tonumber(ARGV[4]) do
    local socket, member = ARGV[i], ARGV[i + 1]
    i = i + 2
    redis.call('HSET', KEYS[1], socket, member)
    redis.call('ZADD', KEYS[2], expiry, socket)
    redis.call(ARGV[3], ARGV[2], '{"p":"join","who":' .. member .. '}')
end
while i <= #ARGV do
    local socket = ARGV[i]
    i = i + 1
    local member = redis.call('HGET', KEYS[1], socket)
    if member then
        redis.call('HDEL', KEYS[1], socket)
        redis.call('ZREM', KEYS[2], socket)
        redis.call(ARGV[3], ARGV[2], '{"p":"leave","who":' .. member .. '}')
    end
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
return 1
