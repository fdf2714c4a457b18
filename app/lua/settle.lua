-- Record how an email job ended (or when it is tried again) and release its lease.
-- KEYS[1] jobs hash P{uid}:jobs; KEYS[2] leases; KEYS[3] schedule; KEYS[4] dead; KEYS[5] timeline
-- KEYS[6] outbox list; KEYS[7] the loop's stats hash; KEYS[8] today's daily hash
-- ARGV[1] job id; ARGV[2] job JSON; ARGV[3] outcome: sent | retry | failed | dropped
-- ARGV[4] retry due at (epoch ms) or ""; ARGV[5] now; ARGV[6] timeline entry JSON;
-- ARGV[7] timeline length cap; ARGV[8] outbox entry JSON or ""; ARGV[9] outbox length cap
-- ARGV[10] loop id; ARGV[11] funnel counter a send bumps ("sent", "nudged" or "");
-- ARGV[12] daily hash TTL, seconds. A send counts once (a re-settled job is unchanged), a failure
-- once per entry into the dead set.
-- Returns "settled", or "gone" when the job no longer exists (its user was deleted meanwhile).
local before = redis.call('HGET', KEYS[1], ARGV[1])
if not before then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local function count(event, funnel)
  if KEYS[7] == nil then return end
  redis.call('HINCRBY', KEYS[7], 'emails_' .. event, 1)
  if funnel ~= '' then redis.call('HINCRBY', KEYS[7], funnel, 1) end
  redis.call('HINCRBY', KEYS[8], ARGV[10] .. ':' .. event, 1)
  redis.call('EXPIRE', KEYS[8], ARGV[12])
end
if ARGV[3] == 'sent' and before ~= ARGV[2] then
  count('sent', ARGV[11])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
elseif ARGV[3] == 'failed' then
  if redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1]) == 1 then
    count('failed', '')
  end
end
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
if ARGV[8] ~= '' then
  redis.call('LPUSH', KEYS[6], ARGV[8])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[9]) - 1)
end
return 'settled'
