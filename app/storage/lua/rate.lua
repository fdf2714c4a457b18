-- A fixed-window rate limit: take `count` from what is left of the window (it starts with the
-- first taken and lasts ARGV[3] ms), or nothing when that would pass the limit.
-- KEYS[1] counter P:browser_rate:<uid>
-- ARGV[1] how many to take; ARGV[2] the most per window; ARGV[3] the window, ms
-- Returns {1 when taken else 0, ms until the window ends}.
local count = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left_ms = redis.call('PTTL', KEYS[1])
local opens = left_ms < 0
if opens then
  left_ms = tonumber(ARGV[3])
end
if used + count > tonumber(ARGV[2]) then
  return {0, left_ms}
end
redis.call('INCRBY', KEYS[1], count)
if opens then
  redis.call('PEXPIRE', KEYS[1], left_ms)
end
return {1, left_ms}
