-- Start one send attempt of an email job: count it and say what the worker needs to know.
-- KEYS[1] jobs hash P{uid}:jobs; KEYS[2] attempts hash P{uid}:attempts; KEYS[3] user hash;
-- KEYS[4] leases zset
-- ARGV[1] job id; ARGV[2] now, epoch ms
-- Returns {job JSON or false, attempts started before this one, when the last one started or
-- false, unsubscribed_at or false, suppressed_at or false}. A job that no longer exists (its user
-- was deleted) has its lease settled here.
local job = redis.call('HGET', KEYS[1], ARGV[1])
if not job then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {false, 0, false, false, false}
end
local last = redis.call('HGET', KEYS[2], ARGV[1] .. '@')
local before = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) - 1
redis.call('HSET', KEYS[2], ARGV[1] .. '@', ARGV[2])
local user = redis.call('HMGET', KEYS[3], 'unsubscribed_at', 'suppressed_at')
return {job, before, last, user[1], user[2]}
