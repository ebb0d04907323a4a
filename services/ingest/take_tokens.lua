-- take_tokens(bucket, capacity, per_minute, cost) takes tokens from one
-- token bucket, a hash with fields tokens and updated_ms. The rate-limit
-- script and the append script both start with this function, so one call
-- can take a request's token and append its events.
-- A cost of 0 only reads the bucket and writes nothing.
-- Returns {allowed (1 or 0), milliseconds until the request would be allowed,
-- whole tokens left, milliseconds until at least one token is in the bucket}.
-- Time comes from the server, so every ingest process shares one clock.
local function take_tokens(bucket, capacity, per_minute, cost)
  local time = redis.call('TIME')
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

  local state = redis.call('HMGET', bucket, 'tokens', 'updated_ms')
  local tokens = tonumber(state[1]) or capacity
  local updated_ms = tonumber(state[2]) or now_ms
  local elapsed_ms = math.max(0, now_ms - updated_ms)
  tokens = math.min(capacity, tokens + elapsed_ms * per_minute / 60000)

  local allowed = 0
  local wait_ms = 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    wait_ms = math.ceil((cost - tokens) * 60000 / per_minute)
  end

  local wait_one_ms = 0
  if tokens < 1 then
    wait_one_ms = math.ceil((1 - tokens) * 60000 / per_minute)
  end

  -- Refilling is a function of time alone, so a read that takes nothing
  -- writes nothing: the stored state still gives the same tokens later.
  if cost > 0 then
    redis.call('HSET', bucket, 'tokens', tostring(tokens), 'updated_ms', now_ms)
    -- A full bucket and a missing one mean the same, so let idle buckets expire.
    redis.call('PEXPIRE', bucket, math.ceil(capacity * 60000 / per_minute) + 1000)
  end
  return {allowed, wait_ms, math.floor(tokens), wait_one_ms}
end

