-- Claim the users whose turn is due, under one lease: each claimed member's score moves to when
-- the lease runs out, and that time is the claim's token (see `holds` in lib.lua). A crashed or
-- stalled worker's users come back when it passes. The worker looks at the schedule's first
-- entry itself first (one read when idle) and runs this only when something is due.
-- KEYS[1] schedule zset P:schedule
-- ARGV[1] now, epoch ms; ARGV[2] lease length, ms; ARGV[3] most members to claim
-- Returns {when to look again (epoch ms) or false, the claim's token or false, member, ...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local token = false
if #due > 0 then
  token = tostring(tonumber(ARGV[1]) + tonumber(ARGV[2]))
  local leased = {}
  for _, member in ipairs(due) do
    leased[#leased + 1] = token
    leased[#leased + 1] = member
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(leased))
end
-- look again when the next turn is due or the first lease runs out, whichever is sooner
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {first[2] or false, token}
for _, member in ipairs(due) do
  result[#result + 1] = member
end
return result
