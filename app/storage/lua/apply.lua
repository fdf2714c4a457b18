-- Apply the engine's decisions for one user, and begin the attempts of the emails due, unless
-- the user changed since the snapshot they were made from, was deleted, or the turn's lease is
-- no longer the caller's; then release the turn with its next time.
-- KEYS[1] the user's hash; KEYS[2] schedule zset; KEYS[3] leases hash; KEYS[4..] the loops'
-- stats hashes
-- ARGV[1] the rev the decisions were made from; ARGV[2] the evaluation job id (eval|<uid>)
-- ARGV[3] the claim's token ("" when acting for none); ARGV[4] the next turn (epoch ms) or ""
-- for none; ARGV[5] "1" when attempts were begun: the turn stays held until they are settled
-- (settle.lua releases it)
-- ARGV[6] n fields to write, then n pairs: `s:` step states, `j:` email jobs (new, or begun)
-- then c counter increments: count, then c triples: stats key (1 = KEYS[4]), field, increment
-- Returns "stale" (the caller's token is not the turn's lease: nothing written), "deleted" (the
-- user was deleted: nothing written, off the schedule), "conflict" (the user changed: nothing
-- written, the caller evaluates again) or "applied".
local turn, token = ARGV[2], ARGV[3]
local held, asked = holds(KEYS[3], turn, token)
if not held then
  return 'stale'
end
local user = redis.call('HMGET', KEYS[1], 'rev', 'del')
if user[2] then
  if token ~= '' then redis.call('HDEL', KEYS[3], turn) end
  redis.call('ZREM', KEYS[2], turn)
  return 'deleted'
end
if (user[1] or '0') ~= ARGV[1] then
  return 'conflict'
end
local n = tonumber(ARGV[6])
if n > 0 then
  local fields = {unpack(ARGV, 7, 6 + 2 * n)}
  add(fields, 'rev', bumped(user[1]))
  redis.call('HSET', KEYS[1], unpack(fields))
end
-- counters move with the states they describe: a refused (conflicting) decision counts nothing
local a = 7 + 2 * n
for i = 1, tonumber(ARGV[a]) do
  local k, counter, by = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  redis.call('HINCRBY', KEYS[3 + tonumber(k)], counter, by)
end
if ARGV[5] ~= '1' then
  if token ~= '' then
    release(KEYS[2], KEYS[3], turn, ARGV[4], asked)
  elseif ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[2], 'LT', ARGV[4], turn)
  end
end
return 'applied'
