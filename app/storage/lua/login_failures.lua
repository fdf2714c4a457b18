-- Failed dashboard logins from one client address, in a window that starts with the first one.
-- KEYS[1] counter P:login_failures:<ip>
-- ARGV[1] "count" to add a failure, "read" only to look; ARGV[2] the window, ms
-- Returns {failures in the current window, ms until it ends (0 when there is none)}.
local failures
if ARGV[1] == 'count' then
  failures = redis.call('INCR', KEYS[1])
else
  failures = tonumber(redis.call('GET', KEYS[1]) or '0')
end
if failures == 0 then
  return {0, 0}
end
local left_ms = redis.call('PTTL', KEYS[1])
if left_ms < 0 then
  left_ms = tonumber(ARGV[2])
  redis.call('PEXPIRE', KEYS[1], left_ms)
end
return {failures, left_ms}
