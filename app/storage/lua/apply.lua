-- Apply the engine's decisions for one user, and begin the attempts of the emails due, unless
-- the user changed since the snapshot they were made from, was deleted, or another worker took
-- the user's turn over; then say when the user's turn comes next.
-- KEYS[1] the user's hash; KEYS[2] schedule zset; KEYS[3..] the loops' stats hashes
-- ARGV[1] the rev the decisions were made from; ARGV[2] the evaluation job id (eval|<uid>)
-- ARGV[3] the lease token held ("" when none is held); ARGV[4] the lease, ms
-- ARGV[5] the next turn (epoch ms) or "" for none; ARGV[6] "1" when attempts were begun: the
-- lease then stays until they are settled (settle.lua says when the next turn is)
-- ARGV[7] n fields to write, then n pairs: `s:` step states, `j:` email jobs (new, or begun)
-- then c counter increments: count, then c triples: stats key (1 = KEYS[3]), field, increment
-- Returns "stale" (another worker holds the turn: nothing written), "deleted" (the user was
-- deleted: nothing written, off the schedule), "conflict" (the user changed: nothing written,
-- the caller evaluates again) or "applied".
if not holds(KEYS[2], ARGV[2], ARGV[3], ARGV[4]) then
  return 'stale'
end
local user = redis.call('HMGET', KEYS[1], 'rev', 'del')
if user[2] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 'deleted'
end
if (user[1] or '0') ~= ARGV[1] then
  return 'conflict'
end
local n = tonumber(ARGV[7])
if n > 0 then
  local fields = {unpack(ARGV, 8, 7 + 2 * n)}
  add(fields, 'rev', bumped(user[1]))
  redis.call('HSET', KEYS[1], unpack(fields))
end
-- counters move with the states they describe: a refused (conflicting) decision counts nothing
local a = 8 + 2 * n
for i = 1, tonumber(ARGV[a]) do
  local k, counter, by = ARGV[a + 3 * i - 2], ARGV[a + 3 * i - 1], ARGV[a + 3 * i]
  redis.call('HINCRBY', KEYS[2 + tonumber(k)], counter, by)
end
if ARGV[6] ~= '1' then
  if ARGV[5] ~= '' then
    if ARGV[3] == '' then
      redis.call('ZADD', KEYS[2], 'LT', ARGV[5], ARGV[2])
    else
      redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
    end
  elseif ARGV[3] ~= '' then
    redis.call('ZREM', KEYS[2], ARGV[2])
  end
end
return 'applied'
