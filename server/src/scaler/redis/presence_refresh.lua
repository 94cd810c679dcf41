-- Keeps an instance's presence members of one channel alive: moves their expiry to now + ttl.
-- A member that is gone (its instance was cut off from Redis for longer than the ttl, and a
-- sweep announced its leave) joins again, announced.
--
-- KEYS, ARGV[1..3]: as presence_update.lua. ARGV[4..]: for each member its socket id and JSON.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local rejoined = 0
for i = 4, #ARGV, 2 do
    local socket, member = ARGV[i], ARGV[i + 1]
    if redis.call('ZADD', KEYS[2], 'XX', 'CH', expiry, socket) == 0
        and not redis.call('ZSCORE', KEYS[2], socket) then
        redis.call('HSET', KEYS[1], socket, member)
        redis.call('ZADD', KEYS[2], expiry, socket)
        redis.call(ARGV[3], ARGV[2], '{"p":"join","who":' .. member .. '}')
        rejoined = rejoined + 1
    end
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
return rejoined
