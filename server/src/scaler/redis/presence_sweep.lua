-- Removes one channel's expired presence members (their instance stopped refreshing them: it
-- died) and announces their leave. Any instance delivering the channel may run it; each
-- member's leave is announced once.
--
-- KEYS: as presence_update.lua. ARGV[1]: the channel's pub/sub channel, ARGV[2]: publish
-- command, ARGV[3]: most members removed per run.
--
-- Returns how many it removed: the caller runs it again while that is ARGV[3].
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, socket in ipairs(expired) do
    redis.call('ZREM', KEYS[2], socket)
    local member = redis.call('HGET', KEYS[1], socket)
    if member then
        redis.call('HDEL', KEYS[1], socket)
        redis.call(ARGV[2], ARGV[1], '{"p":"leave","who":' .. member .. '}')
    end
end
return #expired
