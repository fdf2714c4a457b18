-- Store a Clerk user from `user.created` or `user.updated`, once per delivery.
-- KEYS[1] the user's hash P{uid}; KEYS[2] schedule zset P:schedule
-- ARGV[1] profile JSON; ARGV[2] version: epoch ms of the Clerk data (its updated_at), older data
-- never overwrites newer; ARGV[3] "created" | "updated"; ARGV[4] now, epoch ms
-- ARGV[5] the delivery's `seen` entry; ARGV[6] the oldest minute `seen` keeps; ARGV[7] SEEN_LIMIT
-- ARGV[8] the user's evaluation job id (eval|<uid>); ARGV[9] a log line ("" for none);
-- ARGV[10] the log's length cap
-- Returns one word: "duplicate" (this svix-id was applied before), "deleted" (the user was deleted:
-- ignored), "created" (first data for the user), "updated" (newer data replaced older), "stale"
-- (older than what is stored: only the registration is noted).
local user = redis.call('HMGET', KEYS[1], 'del', 'v', 'reg', 'seen', 'rev', 'log', 'lease')
local since = tonumber(ARGV[6])
if recent_has(user[4] or '', string.sub(ARGV[5], 1, 8), since) then
  return 'duplicate'
end
if user[1] then
  return 'deleted'
end
local fields = {'seen', recent_add(user[4] or '', ARGV[5], since, tonumber(ARGV[7]))}
-- user.created may arrive after user.updated: it still marks the registration, only once, and
-- the registration is what starts the user's loops.
if ARGV[3] == 'created' and not user[3] then
  add(fields, 'reg', ARGV[4])
  add(fields, 'rev', bumped(user[5]))
  wake(KEYS[2], ARGV[8], user[7], ARGV[4], fields)
end
local stored = user[2]
local outcome = 'stale'
if not (stored and tonumber(stored) > tonumber(ARGV[2])) then
  add(fields, 'p', ARGV[1])
  add(fields, 'v', ARGV[2])
  outcome = stored and 'updated' or 'created'
  if ARGV[9] ~= '' then
    add(fields, 'log', log_add(user[6], ARGV[9], tonumber(ARGV[10])))
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
return outcome
