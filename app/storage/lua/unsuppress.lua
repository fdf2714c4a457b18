-- Lift a user's suppression (an operator's `activation suppress remove`): loop email may resume.
-- KEYS[1] user hash P{uid}:user; KEYS[2] timeline list; KEYS[3] suppressed zset P:suppressed
-- ARGV[1] the user id; ARGV[2] timeline entry JSON; ARGV[3] timeline length cap
-- Returns 1 when the user was suppressed (and no longer is), 0 otherwise.
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HDEL', KEYS[1], 'suppressed_at', 'suppression') == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
