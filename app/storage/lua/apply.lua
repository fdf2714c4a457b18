-- Apply the engine's decisions for one user, unless the user changed since the snapshot they
-- were made from, was deleted, or another worker took the evaluation over; then settle the
-- user's evaluation lease and schedule the next look.
-- KEYS[1] activity hash (rev)  KEYS[2] loops hash  KEYS[3] jobs hash  KEYS[4] timeline list
-- KEYS[5] schedule zset        KEYS[6] leases zset  KEYS[7] tombstone  KEYS[8] lease tokens hash
-- KEYS[9..] the loops' stats hashes (P:stats:<loop>)
-- ARGV[1] the rev the decisions were made from; ARGV[2] the evaluation job id (eval|<uid>)
-- ARGV[3] wake at (epoch ms) or ""; ARGV[4] timeline length cap; ARGV[5] the lease token held
-- ("" when the caller holds no lease: then nobody may hold one)
-- ARGV[6] n step states, then n pairs: field, state JSON
-- then m email jobs: count, then m triples: job id, job JSON, due at (epoch ms)
-- then t timeline entries: count, then t JSON entries
-- then c counter increments: count, then c triples: stats key (1 = KEYS[9]), field, increment
-- Returns "stale" (another worker holds the evaluation: nothing written), "deleted" (the user was
-- deleted: nothing written, the lease released), "conflict" (the user changed: nothing written,
-- the caller evaluates again) or "applied".
local mine = (redis.call('HGET', KEYS[8], ARGV[2]) or '') == ARGV[5]
if not mine then
  return 'stale'
end
local function release()
  redis.call('ZREM', KEYS[6], ARGV[2])
  redis.call('HDEL', KEYS[8], ARGV[2])
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  release()
  return 'deleted'
end
local rev = redis.call('HGET', KEYS[1], 'rev') or '0'
if rev ~= ARGV[1] then
  return 'conflict'
end
local a = 6
local states = tonumber(ARGV[a])
for i = 1, states do
  redis.call('HSET', KEYS[2], ARGV[a + 2 * i - 1], ARGV[a + 2 * i])
end
a = a + 2 * states + 1
local jobs = tonumber(ARGV[a])
for i = 1, jobs do
  local id, job, due = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  -- a job id is deterministic: the same decision made twice queues one email
  if redis.call('HSETNX', KEYS[3], id, job) == 1 then
    redis.call('ZADD', KEYS[5], 'NX', due, id)
  end
end
a = a + 3 * jobs + 1
for i = 1, tonumber(ARGV[a]) do
  redis.call('LPUSH', KEYS[4], ARGV[a + i])
end
if tonumber(ARGV[a]) > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
end
-- counters move with the states they describe: a refused (conflicting) decision counts nothing
a = a + tonumber(ARGV[a]) + 1
for i = 1, tonumber(ARGV[a] or '0') do
  local k, counter, by = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  redis.call('HINCRBY', KEYS[8 + tonumber(k)], counter, by)
end
if states + jobs > 0 then
  redis.call('HSET', KEYS[1], 'rev', tonumber(rev) + 1)
end
release()
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[5], 'LT', ARGV[3], ARGV[2])
end
return 'applied'
