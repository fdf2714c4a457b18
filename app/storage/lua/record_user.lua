-- Store a Clerk user from `user.created` or `user.updated`, once per delivery.
-- KEYS[1] user hash        P{uid}:user
-- KEYS[2] tombstone        P{uid}:tombstone
-- KEYS[3] delivery marker  P{uid}:webhook:<svix-id>
-- KEYS[4] activity hash    P{uid}:activity (its `rev` is bumped on registration)
-- KEYS[5] timeline list    P{uid}:timeline
-- KEYS[6] schedule zset    P:schedule
-- ARGV[1] profile JSON
-- ARGV[2] version: epoch ms of the Clerk data (its updated_at); older data never overwrites newer
-- ARGV[3] "created" | "updated"
-- ARGV[4] now, epoch ms
-- ARGV[5] delivery marker TTL, seconds
-- ARGV[6] timeline entry JSON
-- ARGV[7] timeline length cap
-- ARGV[8] the user's evaluation job id (eval|<uid>)
-- Returns one word: "duplicate" (this svix-id was applied before), "deleted" (the user was deleted:
-- ignored), "created" (first data for the user), "updated" (newer data replaced older), "stale"
-- (older than what is stored: only the registration is noted).
if not redis.call('SET', KEYS[3], ARGV[4], 'NX', 'EX', ARGV[5]) then
  return 'duplicate'
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'deleted'
end
local stored = redis.call('HGET', KEYS[1], 'version')
-- user.created may arrive after user.updated: it still marks the registration, only once, and
-- the registration is what starts the user's loops.
if ARGV[3] == 'created' and redis.call('HSETNX', KEYS[1], 'registered_at', ARGV[4]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'rev', 1)
  redis.call('ZADD', KEYS[6], 'LT', ARGV[4], ARGV[8])
end
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 'stale'
end
redis.call('HSET', KEYS[1], 'profile', ARGV[1], 'version', ARGV[2])
if stored then
  return 'updated'
end
return 'created'
