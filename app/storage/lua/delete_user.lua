-- Remove a user's personal data on `user.deleted`, cancel their pending jobs and leave a
-- tombstone, once per delivery.
-- KEYS[1] tombstone        P{uid}:tombstone
-- KEYS[2] delivery marker  P{uid}:webhook:<svix-id>
-- KEYS[3] schedule zset    P:schedule
-- KEYS[4] leases zset      P:leases
-- KEYS[5] jobs hash        P{uid}:jobs (its fields name the user's email jobs)
-- KEYS[6] suppressed zset  P:suppressed (the user id leaves it)
-- KEYS[7] lease tokens     P:lease_tokens (the jobs' leases are released)
-- KEYS[8] outbox list      P:outbox (the user's emails, address and body, leave it)
-- KEYS[9..] every key holding the user's personal data (Keys.personal)
-- ARGV[1] now, epoch ms
-- ARGV[2] delivery marker TTL, seconds
-- ARGV[3] the user's evaluation job id (eval|<uid>)
-- ARGV[4] the user id
-- ARGV[5] how the user's outbox entries begin: `{"job":"email|<uid>|` as JSON writes it
-- Returns "duplicate" (this svix-id was applied before), "deleted" (data removed) or "tombstoned"
-- (nothing stored yet: the tombstone keeps a late user.created from bringing the user back).
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 'duplicate'
end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local unpack = unpack or table.unpack  -- Lua 5.1 on Redis; 5.4 in fakeredis
local jobs = redis.call('HKEYS', KEYS[5])
table.insert(jobs, ARGV[3])
redis.call('ZREM', KEYS[3], unpack(jobs))
redis.call('ZREM', KEYS[4], unpack(jobs))
redis.call('HDEL', KEYS[7], unpack(jobs))
redis.call('ZREM', KEYS[6], ARGV[4])
if #jobs > 1 and redis.call('EXISTS', KEYS[8]) == 1 then
  local prefix = ARGV[5]
  for _, entry in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
    if string.sub(entry, 1, #prefix) == prefix then
      redis.call('LREM', KEYS[8], 0, entry)
    end
  end
end
local removed = redis.call('DEL', unpack(KEYS, 9))
if removed > 0 then
  return 'deleted'
end
return 'tombstoned'
