-- The publications after a position, with the head, in one consistent read.
--
-- KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms), since epoch, since seq, mode.
-- Mode strict: {epoch, seq, 0, {}} when the history does not reach back to the position.
-- Mode tail: whatever is kept after the position (everything kept if the epoch differs).
-- Otherwise {epoch, seq, 1, {{seq, topic, msg, id}, ...}} (id: see publish.lua; empty before it).
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local strict = ARGV[5] == 'strict'
local since = tonumber(ARGV[4])
if ARGV[3] ~= epoch then
  if strict then return {epoch, head, 0, {}} end
  since = 0
end
if since >= head then
  if strict and since > head then return {epoch, head, 0, {}} end
  return {epoch, head, 1, {}}
end
local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end
if strict then
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if #first == 0 or seq_of(first[1][1]) > since + 1 then return {epoch, head, 0, {}} end
end
local out = {}
local entries = redis.call('XRANGE', KEYS[3], string.format('%d', since + 1) .. '-0', '+')
for i, entry in ipairs(entries) do
  local fields = entry[2]
  local topic, msg, id = '', 'null', ''
  for j = 1, #fields, 2 do
    local f = fields[j]
    if f == 't' then topic = fields[j + 1] elseif f == 'm' then msg = fields[j + 1]
    elseif f == 'i' then id = fields[j + 1] end
  end
  out[i] = {seq_of(entry[1]), topic, msg, id}
end
return {epoch, head, 1, out}
