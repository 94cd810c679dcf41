-- Removes expired presence members (their instance stopped refreshing them: it died) and
-- announces their leave. Any instance may run it; each member's leave is announced once.
--
-- KEYS[1]  the expiry index (see presence_update.lua)
-- ARGV[1]  key prefix (see presence_refresh.lua)
-- ARGV[2]  pub/sub prefix
-- ARGV[3]  most members removed per run
--
-- Returns how many it removed: the caller runs it again while that is ARGV[3].
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(expired) do
    local nl = string.find(id, '\n', 1, true)
    local channel, socket = string.sub(id, 1, nl - 1), string.sub(id, nl + 1)
    redis.call('ZREM', KEYS[1], id)
    local hash = ARGV[1] .. ':{' .. channel .. '}:presence'
    local member = redis.call('HGET', hash, socket)
    if member then
        redis.call('HDEL', hash, socket)
        redis.call('PUBLISH', ARGV[2] .. channel, '{"p":"leave","who":' .. member .. '}')
    end
end
return #expired
