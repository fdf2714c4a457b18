-- Queue a dead-letter email job again (an operator's retry): the user's turn sends it.
-- KEYS[1] dead zset; KEYS[2] schedule; KEYS[3] the user's hash
-- ARGV[1] the job id; ARGV[2] the job's field; ARGV[3] the job queued again (JSON);
-- ARGV[4] now, epoch ms; ARGV[5] the user's evaluation job id
-- Returns 1 when the job was dead and is queued again, 0 otherwise.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local user = redis.call('HMGET', KEYS[3], ARGV[2], 'rev', 'del')
if not user[1] or user[3] then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3], 'rev', bumped(user[2]))
redis.call('ZADD', KEYS[2], 'LT', ARGV[4], ARGV[5])
return 1
