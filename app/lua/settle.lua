-- Record how an email job ended (or when it is tried again) and release its lease.
-- KEYS[1] jobs hash P{uid}:jobs; KEYS[2] leases; KEYS[3] schedule; KEYS[4] dead; KEYS[5] timeline
-- KEYS[6] outbox list
-- ARGV[1] job id; ARGV[2] job JSON; ARGV[3] outcome: sent | retry | failed | dropped
-- ARGV[4] retry due at (epoch ms) or ""; ARGV[5] now; ARGV[6] timeline entry JSON;
-- ARGV[7] timeline length cap; ARGV[8] outbox entry JSON or ""; ARGV[9] outbox length cap
-- Returns "settled", or "gone" when the job no longer exists (its user was deleted meanwhile).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
elseif ARGV[3] == 'failed' then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
if ARGV[8] ~= '' then
  redis.call('LPUSH', KEYS[6], ARGV[8])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[9]) - 1)
end
return 'settled'
