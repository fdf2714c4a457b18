-- A fixed-window counter, shared by every process: a window starts with the first count and
-- lasts ARGV[4] ms (the key's expiry). What limits a browser's actions and the dashboard's
-- failed logins.
-- KEYS[1] the counter (P:browser_rate:<uid>, P:login_failures:<ip>)
-- ARGV[1] "take" (add ARGV[2] unless the count would pass ARGV[3]: then add nothing), "count"
-- (add ARGV[2] whatever the count) or "read" (add nothing); ARGV[2] how many; ARGV[3] the most
-- per window ("take" only); ARGV[4] the window, ms
-- Returns {1 when added (or read) else 0, the count in the window, ms until it ends (0: no
-- window open)}.
local mode, count = ARGV[1], tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left_ms = redis.call('PTTL', KEYS[1])
if mode == 'read' or (mode == 'take' and used + count > tonumber(ARGV[3])) then
  if left_ms < 0 then left_ms = 0 end
  return {mode == 'read' and 1 or 0, used, left_ms}
end
used = redis.call('INCRBY', KEYS[1], count)
if left_ms < 0 then
  left_ms = tonumber(ARGV[4])
  redis.call('PEXPIRE', KEYS[1], left_ms)
end
return {1, used, left_ms}
