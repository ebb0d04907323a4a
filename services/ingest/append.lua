-- Append new events to the stream, skipping ids seen before, atomically.
--
-- KEYS[1] events stream, KEYS[2..n+1] one "seen" key per event.
-- ARGV[1] seconds a seen key lives, then pairs: body hash, entry payload.
-- Returns one reply per event: the new entry id, "duplicate" (same id and
-- body seen before) or "conflict" (same id, different body). The seen key and
-- the entry are written together, so a retried request can never lose or
-- double an event.

local ttl_s = tonumber(ARGV[1])
local replies = {}
for i = 2, #KEYS do
  local body_hash = ARGV[(i - 1) * 2]
  local payload = ARGV[(i - 1) * 2 + 1]
  local previous = redis.call('GET', KEYS[i])
  if previous == false then
    local entry_id = redis.call('XADD', KEYS[1], '*', 'event', payload)
    redis.call('SET', KEYS[i], body_hash, 'EX', ttl_s)
    replies[#replies + 1] = entry_id
  elseif previous == body_hash then
    replies[#replies + 1] = 'duplicate'
  else
    replies[#replies + 1] = 'conflict'
  end
end
return replies
