-- Extend the leases a worker still holds (a claim whose users still wait for a free lane, or a
-- slow send), so no other worker takes them over meanwhile.
-- KEYS[1] schedule zset P:schedule
-- ARGV[1] the new expiry, epoch ms (the new token); ARGV[2] the lease, ms; then pairs: member,
-- the token it is held with
-- Returns the members whose lease was extended: one taken back after an expiry, or whose turn
-- ended meanwhile, is left alone.
local renewed, leased = {}, {}
for i = 3, #ARGV, 2 do
  if holds(KEYS[1], ARGV[i], ARGV[i + 1], ARGV[2]) then
    renewed[#renewed + 1] = ARGV[i]
    leased[#leased + 1] = ARGV[1]
    leased[#leased + 1] = ARGV[i]
  end
end
if #leased > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(leased))
end
return renewed
