-- Unsubscribe a user: no further loop email; queued emails are dropped and recorded.
-- KEYS[1] user hash; KEYS[2] jobs hash; KEYS[3] schedule; KEYS[4] timeline; KEYS[5] tombstone
-- ARGV[1] now, epoch ms; ARGV[2] timeline entry JSON; ARGV[3] timeline length cap;
-- then pairs: job id, the job's JSON as dropped (one per job queued when the snapshot was read)
-- Returns how many queued jobs were dropped, or -1 when the user is deleted or not stored (then
-- nothing is written: an unsubscribe must not bring a deleted user's keys back).
if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('HSETNX', KEYS[1], 'unsubscribed_at', ARGV[1])
local dropped = 0
for i = 4, #ARGV, 2 do
  -- a job may have been sent since it was read; only a job still scheduled is dropped
  if redis.call('ZREM', KEYS[3], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    dropped = dropped + 1
  end
end
redis.call('LPUSH', KEYS[4], ARGV[2])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[3]) - 1)
return dropped
