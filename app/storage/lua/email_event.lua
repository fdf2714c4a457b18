-- Record a Resend delivery event (delivered, bounced, complained, opened, clicked) on the user's
-- timeline, once per delivery; a hard bounce or a complaint also suppresses the user.
-- KEYS[1] user hash P{uid}:user; KEYS[2] tombstone; KEYS[3] delivery marker P{uid}:webhook:<svix-id>;
-- KEYS[4] timeline list; KEYS[5] suppressed zset P:suppressed
-- ARGV[1] now, epoch ms; ARGV[2] delivery marker TTL, seconds; ARGV[3] timeline entry JSON;
-- ARGV[4] timeline length cap; ARGV[5] suppression reason ("bounced", "complained") or "";
-- ARGV[6] the user id; ARGV[7] timeline entry JSON for the suppression
-- Returns "tombstoned" (user deleted), "unknown" (no such user), "duplicate" (this svix-id was
-- applied before), "suppressed" (newly), or "recorded".
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'tombstoned'
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'unknown'
end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 'duplicate'
end
local cap = tonumber(ARGV[4]) - 1
redis.call('LPUSH', KEYS[4], ARGV[3])
local outcome = 'recorded'
if ARGV[5] ~= '' and redis.call('HSETNX', KEYS[1], 'suppressed_at', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'suppression', ARGV[5])
  redis.call('ZADD', KEYS[5], ARGV[1], ARGV[6])
  redis.call('LPUSH', KEYS[4], ARGV[7])
  outcome = 'suppressed'
end
redis.call('LTRIM', KEYS[4], 0, cap)
return outcome
