-- Claim the users' turns (and batches) that are due, under one lease: the claim draws a token
-- from the shard's fence counter, writes it as each member's lease and moves each member's score
-- to when the lease runs out, so a crashed or stalled worker's members come back then, and its
-- token no longer passes once another claim took them (see `holds` in lib.lua). The worker looks
-- at the schedule's first entry itself first (one read when idle) and runs this only when
-- something is due.
-- KEYS[1] schedule zset; KEYS[2] leases hash; KEYS[3] fence counter
-- ARGV[1] now, epoch ms; ARGV[2] lease length, ms; ARGV[3] most members to claim
-- Returns {when to look again (epoch ms) or false, the claim's token or false, member, ...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local token = false
if #due > 0 then
  token = tostring(redis.call('INCR', KEYS[3]))
  local expiry = tonumber(ARGV[1]) + tonumber(ARGV[2])
  local scored, held = {}, {}
  for _, member in ipairs(due) do
    add(scored, expiry, member)
    add(held, member, token)
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(scored))
  redis.call('HSET', KEYS[2], unpack(held))
end
-- look again when the next turn is due or the first lease runs out, whichever is sooner
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {first[2] or false, token}
for _, member in ipairs(due) do
  result[#result + 1] = member
end
return result
