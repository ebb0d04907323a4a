-- Apply a batch of events to one board period, at most once per event id.
--
-- KEYS[1] scores (sorted set), KEYS[2] applied event ids (sorted set scored by
-- apply time in ms), KEYS[3] sequence counter, KEYS[4] latest_at (hash user ->
-- "occurred:event_id" of the value kept by `latest`), KEYS[5] reached (hash
-- user -> when the athlete reached their score), KEYS[6] order (sorted set of
-- equal scores ordered by member, for tie policy `first`).
-- ARGV[1] operator (sum | best | latest | count), ARGV[2] now in ms,
-- ARGV[3] how long applied ids are kept in ms, ARGV[4] tie policy (shared |
-- first), ARGV[5] number h of hidden athletes, ARGV[6..5+h] their user ids,
-- ARGV[6+h] the events: groups of four fields, each field followed by the
-- byte 0x1F: event id, user id, sorted-set score, occurred_at as 16
-- zero-padded digits (ms since the epoch plus 10^14, so every value is positive).
-- One argument for all events saves the client encoding four per event.
--
-- Returns {seq, user, old score|false, new score, old rank|false, new rank, ...}
-- for every visible athlete whose score or rank changed, or {} when nothing did.
-- Scores are returned as strings because a Lua number would be truncated to an
-- integer. Hidden athletes keep their scores but take no rank. Recording the
-- event id and updating the score happen in this one script, so an entry
-- delivered again after a crash has no second effect.
--
-- Tie policy `first`: the order set holds one member per athlete,
--   <score key>:<reached>:<user id>
-- where the score key is "1" followed by 2^53 minus the score in 16 digits for
-- scores >= 0, else "2" followed by the magnitude in 16 digits. Every part is
-- a fixed-width decimal string of an integer below 2^53, so members compare
-- byte by byte as (score descending, reached ascending, user id ascending) with
-- no rounding, and ZRANK gives the exact place.

local scores, applied, seq_key, latest_at, reached, order = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local operator = ARGV[1]
local now_ms = tonumber(ARGV[2])
local tie_first = ARGV[4] == 'first'
local hidden_count = tonumber(ARGV[5])
local hidden = {}
local is_hidden = {}
for i = 6, 5 + hidden_count do
  hidden[#hidden + 1] = ARGV[i]
  is_hidden[ARGV[i]] = true
end
local events = ARGV[6 + hidden_count]

-- A script that fails half-way keeps the writes it already made, so an event
-- id recorded before a failing score update would be skipped on every retry.
-- Check the operator and every key's type before the first write, so the
-- likely failures (an unknown operator, a key of the wrong type) happen while
-- nothing has been written yet.
if operator ~= 'sum' and operator ~= 'count' and operator ~= 'best' and operator ~= 'latest' then
  return redis.error_reply('unknown operator ' .. operator)
end
local expected_types = {zset = {scores, applied, order}, string = {seq_key}, hash = {latest_at, reached}}
for expected, names in pairs(expected_types) do
  for _, name in ipairs(names) do
    local found = redis.call('TYPE', name)['ok']
    if found ~= 'none' and found ~= expected then
      return redis.error_reply('WRONGTYPE key ' .. name .. ' is a ' .. found .. ', expected a ' .. expected)
    end
  end
end

redis.call('ZREMRANGEBYSCORE', applied, '-inf', '(' .. (now_ms - tonumber(ARGV[3])))

-- Byte-wise "a < b"; Lua's own string comparison follows the C locale's collation.
local function bytes_less(a, b)
  local length = math.min(#a, #b)
  for i = 1, length do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local function order_member(score, when, user)
  local value = tonumber(score)
  local key
  if value >= 0 then
    key = '1' .. string.format('%016.0f', 9007199254740992 - value)
  else
    key = '2' .. string.format('%016.0f', -value)
  end
  return key .. ':' .. when .. ':' .. user
end

local function member_of(user)
  local score = redis.call('ZSCORE', scores, user)
  if not score then
    return false
  end
  return order_member(score, redis.call('HGET', reached, user), user)
end

local function rank_of(user, score)
  if tie_first then
    local position = redis.call('ZRANK', order, member_of(user))
    local rank = position + 1
    for _, other in ipairs(hidden) do
      local member = member_of(other)
      if member then
        local other_position = redis.call('ZRANK', order, member)
        if other_position and other_position < position then
          rank = rank - 1
        end
      end
    end
    return rank
  end
  local rank = redis.call('ZCOUNT', scores, '(' .. score, '+inf') + 1
  for _, other in ipairs(hidden) do
    local other_score = redis.call('ZSCORE', scores, other)
    if other_score and tonumber(other_score) > tonumber(score) then
      rank = rank - 1
    end
  end
  return rank
end

-- Arguments per call when a long list is sent in parts, because unpack()
-- fails beyond about 8000 results in Lua 5.1.
local PART = 1000

-- Return the concatenated replies of ZMSCORE key over every member of list.
local function zmscore_all(key, list)
  local found = {}
  for first = 1, #list, PART do
    local reply = redis.call('ZMSCORE', key, unpack(list, first, math.min(first + PART - 1, #list)))
    for i = 1, #reply do
      found[#found + 1] = reply[i]
    end
  end
  return found
end

local ids, users, values, occurreds = {}, {}, {}, {}
for event_id, user, score, occurred in string.gmatch(events, '([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31') do
  local n = #ids + 1
  ids[n], users[n], values[n], occurreds[n] = event_id, user, score, occurred
end

-- Keep the events whose id is neither recorded nor earlier in this batch, and
-- record their ids before any score changes, in a few calls for the whole batch.
local recorded = zmscore_all(applied, ids)
local fresh = {}
local seen_in_batch = {}
local new_ids = {}
for i = 1, #ids do
  if not recorded[i] and not seen_in_batch[ids[i]] then
    seen_in_batch[ids[i]] = true
    fresh[#fresh + 1] = i
    new_ids[#new_ids + 1] = now_ms
    new_ids[#new_ids + 1] = ids[i]
  end
end
for first = 1, #new_ids, PART do
  redis.call('ZADD', applied, unpack(new_ids, first, math.min(first + PART - 1, #new_ids)))
end

-- Read the scores before the batch with one ZMSCORE for all its athletes.
-- Each athlete's first event would read the same, because only an athlete's
-- own events change their score.
local athletes = {}
local listed = {}
for _, i in ipairs(fresh) do
  if not listed[users[i]] then
    listed[users[i]] = true
    athletes[#athletes + 1] = users[i]
  end
end
local stored = {}
local stored_list = zmscore_all(scores, athletes)
for i, user in ipairs(athletes) do
  stored[user] = stored_list[i]
end

local before = {}
local touched = {}
-- Sum and count boards keep ZINCRBY's reply, which ZSCORE would return too, to skip reading it again.
local incremented = {}
-- Best boards track each athlete's score here, so no event reads it from the sorted set.
local best_so_far = {}
for _, i in ipairs(fresh) do
  local event_id, user, score, occurred = ids[i], users[i], values[i], occurreds[i]
  -- The old rank is taken at the athlete's first event of the batch, after the batch's earlier events.
  if before[user] == nil then
    local old = stored[user]
    if old then
      local old_member = tie_first and member_of(user) or false
      local old_rank = false
      if not is_hidden[user] then
        old_rank = rank_of(user, old)
      end
      before[user] = {old, old_rank, old_member}
    else
      before[user] = {false, false, false}
    end
    best_so_far[user] = old
    touched[#touched + 1] = user
  end
  -- Each branch reads only what it compares: every read is a call the server pays for per event.
  if operator == 'sum' or operator == 'count' then
    incremented[user] = redis.call('ZINCRBY', scores, score, user)
    if tie_first then
      local when = redis.call('HGET', reached, user)
      if not when or tonumber(occurred) > tonumber(when) then
        redis.call('HSET', reached, user, occurred)
      end
    end
  elseif operator == 'best' then
    local current = best_so_far[user]
    if not current or tonumber(score) > tonumber(current) then
      redis.call('ZADD', scores, score, user)
      best_so_far[user] = score
      if tie_first then
        redis.call('HSET', reached, user, occurred)
      end
    elseif tie_first and tonumber(score) == tonumber(current) and tonumber(occurred) < tonumber(redis.call('HGET', reached, user)) then
      redis.call('HSET', reached, user, occurred)
    end
  else
    local candidate = occurred .. ':' .. event_id
    local previous = redis.call('HGET', latest_at, user)
    if not previous or not bytes_less(candidate, previous) then
      redis.call('HSET', latest_at, user, candidate)
      redis.call('ZADD', scores, score, user)
      if tie_first then
        redis.call('HSET', reached, user, occurred)
      end
    end
  end
end

if tie_first then
  for _, user in ipairs(touched) do
    local old_member = before[user][3]
    if old_member then
      redis.call('ZREM', order, old_member)
    end
    redis.call('ZADD', order, 0, member_of(user))
  end
end

local changes = {}
for _, user in ipairs(touched) do
  if not is_hidden[user] then
    local new = incremented[user] or redis.call('ZSCORE', scores, user)
    local old = before[user]
    local new_rank = rank_of(user, new)
    if new ~= old[1] or new_rank ~= old[2] then
      changes[#changes + 1] = user
      changes[#changes + 1] = old[1]
      changes[#changes + 1] = new
      changes[#changes + 1] = old[2]
      changes[#changes + 1] = new_rank
    end
  end
end
if #changes == 0 then
  return {}
end
local seq = redis.call('INCR', seq_key)
table.insert(changes, 1, seq)
return changes
