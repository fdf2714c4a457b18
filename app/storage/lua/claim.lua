-- Claim due jobs under a fenced lease, after putting back the jobs of expired leases (crashed or
-- stalled workers). An idle call costs two reads besides the EVALSHA: workers poll this.
-- KEYS[1] schedule zset P:schedule; KEYS[2] leases zset P:leases (job id by lease expiry)
-- KEYS[3] lease tokens hash P:lease_tokens (job id -> the token of the claim holding it)
-- KEYS[4] lease sequence P:lease_seq (a counter: every claim's token is new, never reused)
-- ARGV[1] now, epoch ms; ARGV[2] lease length, ms; ARGV[3] most jobs to claim
-- Returns {when to look again (epoch ms) or false, the claim's token or false, claimed job id, ...}
-- A job put back loses its token: its old holder's begin_attempt, settle, apply and renew are
-- refused from then on (see those scripts), so a stalled worker can never settle over a newer one.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local unpack = unpack or table.unpack  -- Lua 5.1 on Redis; 5.4 in fakeredis
local first_lease = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first_lease[2] and tonumber(first_lease[2]) <= now then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
  local back = {}
  for _, id in ipairs(expired) do
    table.insert(back, now)
    table.insert(back, id)
  end
  redis.call('ZREM', KEYS[2], unpack(expired))
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZADD', KEYS[1], 'LT', unpack(back))
end
local first_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due, token = {}, false
if first_due[2] and tonumber(first_due[2]) <= now then
  due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
  token = tostring(redis.call('INCR', KEYS[4]))
  local expiry = now + tonumber(ARGV[2])
  local leased, tokens = {}, {}
  for _, id in ipairs(due) do
    table.insert(leased, expiry)
    table.insert(leased, id)
    table.insert(tokens, id)
    table.insert(tokens, token)
  end
  redis.call('ZREM', KEYS[1], unpack(due))
  redis.call('ZADD', KEYS[2], unpack(leased))
  redis.call('HSET', KEYS[3], unpack(tokens))
  first_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  first_lease = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
end
-- look again when the next job is due or the first lease runs out, whichever is sooner
local wake = first_due[2] and tonumber(first_due[2])
local lease_end = first_lease[2] and tonumber(first_lease[2])
if lease_end and (not wake or lease_end < wake) then
  wake = lease_end
end
local result = {wake or false, token}
for _, id in ipairs(due) do
  table.insert(result, id)
end
return result
