-- Take the request's rate-limit token, then append its new events to the
-- stream, skipping ids seen before, atomically (take_tokens.lua comes first).
--
-- KEYS[1] events stream, KEYS[2] the poster's rate-limit bucket,
-- KEYS[3..n+2] one "seen" key per event.
-- ARGV[1] seconds a seen key lives, ARGV[2] the most entries the stream may
-- hold, ARGV[3] the bucket's capacity in tokens, ARGV[4] its refill rate in
-- tokens per minute (0 takes no token and leaves KEYS[2] alone), then pairs:
-- body hash, entry payload.
-- Returns one reply per event: the new entry id, "duplicate" (same id and
-- body seen before) or "conflict" (same id, different body). The seen key and
-- the entry are written together, so a retried request can never lose or
-- double an event.
-- When the bucket is empty, nothing is appended and the reply is
-- {"limited", milliseconds until a token is in the bucket}. A request with no
-- events only takes its token.
-- When the new events would take the stream past its bound, nothing is
-- written and the reply is {"full", current length}. Entries leave the stream
-- only when every consumer group has acknowledged them, so the length is the
-- backlog of the slowest group.

local ttl_s = tonumber(ARGV[1])
local max_entries = tonumber(ARGV[2])
local per_minute = tonumber(ARGV[4])
local FIRST_EVENT_KEY = 3

if per_minute > 0 then
  local allowance = take_tokens(KEYS[2], tonumber(ARGV[3]), per_minute, 1)
  if allowance[1] == 0 then
    return {'limited', allowance[2]}
  end
end

-- previous[i] is the body hash that event i is compared with. It is the stored
-- hash, or that of an earlier event of this request with the same id. So a
-- repeated id inside one request is a duplicate or a conflict, not a second entry.
local previous = {}
local first_in_request = {}
local new_events = 0
for i = FIRST_EVENT_KEY, #KEYS do
  local key = KEYS[i]
  local body_hash = ARGV[(i - FIRST_EVENT_KEY) * 2 + 5]
  if first_in_request[key] ~= nil then
    previous[i] = first_in_request[key]
  else
    previous[i] = redis.call('GET', key)
    if previous[i] == false then
      new_events = new_events + 1
      first_in_request[key] = body_hash
    else
      first_in_request[key] = previous[i]
    end
  end
end

if new_events > 0 then
  local length = redis.call('XLEN', KEYS[1])
  if length + new_events > max_entries then
    return {'full', length}
  end
end

local replies = {}
for i = FIRST_EVENT_KEY, #KEYS do
  local body_hash = ARGV[(i - FIRST_EVENT_KEY) * 2 + 5]
  local payload = ARGV[(i - FIRST_EVENT_KEY) * 2 + 6]
  if previous[i] == false then
    local entry_id = redis.call('XADD', KEYS[1], '*', 'event', payload)
    redis.call('SET', KEYS[i], body_hash, 'EX', ttl_s)
    replies[#replies + 1] = entry_id
  elseif previous[i] == body_hash then
    -- Rewriting the same value is a write, so this connection's WAITAOF also
    -- waits for the original append, which may have come on another connection
    -- and not be on disk yet. Without it a retry could get "duplicate" before
    -- the event it repeats is durable.
    redis.call('SET', KEYS[i], body_hash, 'KEEPTTL')
    replies[#replies + 1] = 'duplicate'
  else
    replies[#replies + 1] = 'conflict'
  end
end
return replies
