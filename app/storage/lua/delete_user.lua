-- Remove a user's personal data on `user.deleted`, take them off the schedule and leave a
-- tombstone (`del`, and `seen` to know the delivery again), once per delivery.
-- KEYS[1] the user's hash; KEYS[2] schedule; KEYS[3] suppressed zset; KEYS[4] outbox list;
-- KEYS[5] dead zset
-- ARGV[1] now, epoch ms; ARGV[2] the delivery's `seen` entry; ARGV[3] the oldest minute `seen`
-- keeps; ARGV[4] SEEN_LIMIT; ARGV[5] the user's evaluation job id; ARGV[6] the user id
-- ARGV[7] how the user's outbox entries begin: `{"job":"email|<uid>|` as JSON writes it
-- ARGV[8] how the user's email job ids begin: `email|<uid>|`
-- Returns "duplicate" (this svix-id was applied before), "deleted" (data removed) or "tombstoned"
-- (nothing stored: the tombstone keeps a late user.created from bringing the user back).
local user = redis.call('HMGET', KEYS[1], 'del', 'seen')
local since = tonumber(ARGV[3])
if recent_has(user[2] or '', string.sub(ARGV[2], 1, 8), since) then
  return 'duplicate'
end
local seen = recent_add(user[2] or '', ARGV[2], since, tonumber(ARGV[4]))
local outcome = 'tombstoned'
if not user[1] then
  local jobs = {}
  local names = redis.call('HKEYS', KEYS[1])
  for _, name in ipairs(names) do
    if string.sub(name, 1, 2) == 'j:' then
      jobs[#jobs + 1] = ARGV[8] .. string.sub(name, 3)
    end
  end
  if #jobs > 0 then
    redis.call('ZREM', KEYS[5], unpack(jobs))
    if redis.call('EXISTS', KEYS[4]) == 1 then
      for _, entry in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
        if string.sub(entry, 1, #ARGV[7]) == ARGV[7] then
          redis.call('LREM', KEYS[4], 0, entry)
        end
      end
    end
  end
  if #names > 0 then
    redis.call('DEL', KEYS[1])
    outcome = 'deleted'
  end
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[6])
end
redis.call('HSET', KEYS[1], 'del', user[1] or ARGV[1], 'seen', seen)
return outcome
