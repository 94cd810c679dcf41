-- A channel's presence: the JSON of every member that has not expired. A member of an instance
-- that died stays in the hash until a sweep removes it (and announces its leave); it is left
-- out here as soon as it expires.
--
-- KEYS: as presence_update.lua.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local members = {}
for i = 1, #all, 2 do
    local expiry = redis.call('ZSCORE', KEYS[2], all[i])
    if expiry and tonumber(expiry) > now then
        members[#members + 1] = all[i + 1]
    end
end
return members
