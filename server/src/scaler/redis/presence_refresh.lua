-- Keeps an instance's presence members alive: moves their expiry to now + ttl. A member that
-- is gone (its instance was cut off from Redis for longer than the ttl, and a sweep announced
-- its leave) joins again, announced.
--
-- KEYS[1]  the expiry index (see presence_update.lua)
-- ARGV[1]  presence ttl (ms)
-- ARGV[2]  key prefix: a channel's presence hash is "<prefix>:{<channel>}:presence"
-- ARGV[3]  pub/sub prefix: a channel's pub/sub channel is "<pub prefix><channel>"
-- ARGV[4..] for each member: its channel, socket id and member JSON
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local rejoined = 0
for i = 4, #ARGV, 3 do
    local channel, socket, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local id = channel .. '\n' .. socket
    if redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, id) == 0
        and not redis.call('ZSCORE', KEYS[1], id) then
        redis.call('HSET', ARGV[2] .. ':{' .. channel .. '}:presence', socket, member)
        redis.call('ZADD', KEYS[1], expiry, id)
        redis.call('PUBLISH', ARGV[3] .. channel, '{"p":"join","who":' .. member .. '}')
        rejoined = rejoined + 1
    end
end
return rejoined
