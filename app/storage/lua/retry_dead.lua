-- Put a dead-letter email job back on the schedule (an operator's retry).
-- KEYS[1] dead zset; KEYS[2] schedule; KEYS[3] jobs hash; KEYS[4] attempts hash
-- ARGV[1] job id; ARGV[2] the job JSON, queued again; ARGV[3] now, epoch ms
-- Returns 1 when the job was dead and is queued again, 0 otherwise.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[1], ARGV[1] .. '@', ARGV[1] .. '^')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
