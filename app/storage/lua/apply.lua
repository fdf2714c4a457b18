-- Apply the engine's decisions for one user, and begin the attempts of the emails due, unless
-- the user changed since the snapshot they were made from, was deleted, or the turn's lease is
-- no longer the caller's; then release the turn with its next time.
-- KEYS[1] the user's hash; KEYS[2] schedule zset; KEYS[3..] the loops' stats hashes
-- ARGV[1] the rev the decisions were made from; ARGV[2] the evaluation job id (eval|<uid>)
-- ARGV[3] the claim's token ("" when acting for none); ARGV[4] the next turn (epoch ms) or ""
-- for none; ARGV[5] "1" when attempts were begun: the turn stays held until they are settled
-- (settle.lua releases it)
-- ARGV[6] n fields to write, then n pairs: `s:` step states, `j:` email jobs (new, or begun)
-- then c counter increments: count, then c triples: stats key (1 = KEYS[3]), field, increment
-- Returns "stale" (the caller's token is not the turn's lease: nothing written), "deleted" (the
-- user was deleted: nothing written, off the schedule), "conflict" (the user changed: nothing
-- written, the caller evaluates again) or "applied".
local turn, token = ARGV[2], ARGV[3]
local user = redis.call('HMGET', KEYS[1], 'rev', 'del', 'lease')
if user[2] then
  redis.call('ZREM', KEYS[2], turn)
  return 'deleted'
end
local held, asked = holds(user[3], token)
if not held then
  return 'stale'
end
if (user[1] or '0') ~= ARGV[1] then
  return 'conflict'
end
local n = tonumber(ARGV[6])
local fields = {unpack(ARGV, 7, 6 + 2 * n)}
if n > 0 then
  add(fields, 'rev', bumped(user[1]))
end
local releasing = ARGV[5] ~= '1' and token ~= ''
if releasing then
  add(fields, 'lease', '')
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
-- counters move with the states they describe: a refused (conflicting) decision counts nothing
local a = 7 + 2 * n
for i = 1, tonumber(ARGV[a]) do
  local k, counter, by = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  redis.call('HINCRBY', KEYS[2 + tonumber(k)], counter, by)
end
if releasing then
  release(KEYS[2], turn, ARGV[4], asked)
elseif ARGV[5] ~= '1' and ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], 'LT', ARGV[4], turn)
end
return 'applied'
