-- Take tokens from one token bucket, atomically (take_tokens.lua comes first).
--
-- KEYS[1] the bucket hash.
-- ARGV[1] capacity in tokens, ARGV[2] refill rate in tokens per minute,
-- ARGV[3] tokens this request costs; 0 only reads the bucket.

return take_tokens(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
