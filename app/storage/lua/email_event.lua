-- Record a Resend delivery event (delivered, bounced, complained, opened, clicked) in the user's
-- log, once per delivery; a hard bounce or a complaint also suppresses the user.
-- KEYS[1] the user's hash; KEYS[2] suppressed zset P:suppressed
-- ARGV[1] now, epoch ms; ARGV[2] the delivery's `seen` entry; ARGV[3] the oldest minute `seen`
-- keeps; ARGV[4] SEEN_LIMIT; ARGV[5] the log line; ARGV[6] the log's length cap;
-- ARGV[7] suppression reason ("bounced", "complained") or ""; ARGV[8] the user id
-- Returns "tombstoned" (user deleted), "unknown" (no such user), "duplicate" (this svix-id was
-- applied before), "suppressed" (newly), or "recorded".
local user = redis.call('HMGET', KEYS[1], 'del', 'p', 'seen', 'log', 'sup', 'rev')
if user[1] then
  return 'tombstoned'
end
if not user[2] then
  return 'unknown'
end
local since = tonumber(ARGV[3])
if recent_has(user[3] or '', string.sub(ARGV[2], 1, 8), since) then
  return 'duplicate'
end
local fields = {'seen', recent_add(user[3] or '', ARGV[2], since, tonumber(ARGV[4])),
                'log', log_add(user[4], ARGV[5], tonumber(ARGV[6]))}
local outcome = 'recorded'
if ARGV[7] ~= '' and not user[5] then
  add(fields, 'sup', ARGV[1])
  add(fields, 'sup_why', ARGV[7])
  add(fields, 'rev', bumped(user[6]))
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[8])
  outcome = 'suppressed'
end
redis.call('HSET', KEYS[1], unpack(fields))
return outcome
