-- Start one send attempt of an email job under its lease: count it and say what the worker needs
-- to know.
-- KEYS[1] jobs hash P{uid}:jobs; KEYS[2] attempts hash P{uid}:attempts; KEYS[3] user hash;
-- KEYS[4] leases zset; KEYS[5] lease tokens hash P:lease_tokens
-- ARGV[1] job id; ARGV[2] now, epoch ms; ARGV[3] the lease token the worker holds ("" if none)
-- Returns {"stale"} (another worker holds the job now: do nothing), {"gone"} (its user was
-- deleted; the lease is released here), or {"ok", job JSON, attempts started before this one,
-- when the first attempt that may have reached Resend started or false, unsubscribed_at or
-- false, suppressed_at or false}. Attempts of a job already ended are not counted.
if (redis.call('HGET', KEYS[5], ARGV[1]) or '') ~= ARGV[3] then
  return {'stale'}
end
local job = redis.call('HGET', KEYS[1], ARGV[1])
if not job then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
  return {'gone'}
end
local first = redis.call('HGET', KEYS[2], ARGV[1] .. '^')
local before = 0
if cjson.decode(job).status == 'queued' then
  before = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) - 1
  if first then
    redis.call('HSET', KEYS[2], ARGV[1] .. '@', ARGV[2])
  else
    redis.call('HSET', KEYS[2], ARGV[1] .. '@', ARGV[2], ARGV[1] .. '^', ARGV[2])
  end
end
local user = redis.call('HMGET', KEYS[3], 'unsubscribed_at', 'suppressed_at')
return {'ok', job, before, first or false, user[1] or false, user[2] or false}
