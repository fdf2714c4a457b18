-- Claim due jobs under a lease, after putting back the jobs of expired leases (crashed workers).
-- An idle call costs two reads besides the EVALSHA: workers poll this.
-- KEYS[1] schedule zset P:schedule; KEYS[2] leases zset P:leases
-- ARGV[1] now, epoch ms; ARGV[2] lease length, ms; ARGV[3] most jobs to claim
-- Returns {when to look again (epoch ms) or false, claimed job id, ...}
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local first_lease = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first_lease[2] and tonumber(first_lease[2]) <= now then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], 'LT', now, id)
  end
end
local first_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due = {}
if first_due[2] and tonumber(first_due[2]) <= now then
  due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
  end
  first_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  first_lease = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
end
-- look again when the next job is due or the first lease runs out, whichever is sooner
local wake = first_due[2] and tonumber(first_due[2])
local lease_end = first_lease[2] and tonumber(first_lease[2])
if lease_end and (not wake or lease_end < wake) then
  wake = lease_end
end
local result = {wake or false}
for _, id in ipairs(due) do
  table.insert(result, id)
end
return result
