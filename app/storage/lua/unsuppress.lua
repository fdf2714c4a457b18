-- Lift a user's suppression (an operator's `activation suppress remove`): loop email may resume.
-- KEYS[1] the user's hash; KEYS[2] suppressed zset P:suppressed
-- ARGV[1] the user id; ARGV[2] the log line; ARGV[3] the log's length cap
-- Returns 1 when the user was suppressed (and no longer is), 0 otherwise.
redis.call('ZREM', KEYS[2], ARGV[1])
local user = redis.call('HMGET', KEYS[1], 'sup', 'log', 'rev', 'del')
if not user[1] or user[4] then
  return 0
end
redis.call('HDEL', KEYS[1], 'sup', 'sup_why')
redis.call('HSET', KEYS[1], 'log', log_add(user[2], ARGV[2], tonumber(ARGV[3])),
           'rev', bumped(user[3]))
return 1
