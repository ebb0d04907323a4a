-- Apply a batch of events to one board period, at most once per event id.
--
-- KEYS[1] scores (sorted set), KEYS[2] applied event ids (sorted set scored by
-- apply time in ms), KEYS[3] sequence counter, KEYS[4] latest_at (hash user ->
-- occurred_at ms, for the `latest` operator).
-- ARGV[1] operator (sum | best | latest | count), ARGV[2] now in ms,
-- ARGV[3] how long applied ids are kept in ms, then groups of four:
-- event id, user id, sorted-set score, occurred_at ms.
--
-- Returns {seq, user, old score|false, new score, old rank|false, new rank, ...}
-- for every athlete whose score changed, or {} when nothing changed. Scores are
-- returned as strings because a Lua number would be truncated to an integer.
-- Recording the event id and updating the score happen in this one script, so
-- an entry delivered again after a crash has no second effect.

local scores, applied, seq_key, latest_at = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local operator = ARGV[1]
local now_ms = tonumber(ARGV[2])

redis.call('ZREMRANGEBYSCORE', applied, '-inf', '(' .. (now_ms - tonumber(ARGV[3])))

local function rank_of(score)
  return redis.call('ZCOUNT', scores, '(' .. score, '+inf') + 1
end

local before = {}
local touched = {}
for i = 4, #ARGV, 4 do
  local event_id, user, score, occurred_ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if redis.call('ZADD', applied, 'NX', now_ms, event_id) == 1 then
    if before[user] == nil then
      local old = redis.call('ZSCORE', scores, user)
      if old then
        before[user] = {old, rank_of(old)}
      else
        before[user] = {false, false}
      end
      touched[#touched + 1] = user
    end
    if operator == 'sum' or operator == 'count' then
      redis.call('ZINCRBY', scores, score, user)
    elseif operator == 'best' then
      redis.call('ZADD', scores, 'GT', score, user)
    elseif operator == 'latest' then
      local previous = tonumber(redis.call('HGET', latest_at, user))
      if previous == nil or previous <= occurred_ms then
        redis.call('HSET', latest_at, user, occurred_ms)
        redis.call('ZADD', scores, score, user)
      end
    else
      return redis.error_reply('unknown operator ' .. operator)
    end
  end
end

local changes = {}
for _, user in ipairs(touched) do
  local new = redis.call('ZSCORE', scores, user)
  local old = before[user]
  if new ~= old[1] then
    changes[#changes + 1] = user
    changes[#changes + 1] = old[1]
    changes[#changes + 1] = new
    changes[#changes + 1] = old[2]
    changes[#changes + 1] = rank_of(new)
  end
end
if #changes == 0 then
  return {}
end
local seq = redis.call('INCR', seq_key)
table.insert(changes, 1, seq)
return changes
