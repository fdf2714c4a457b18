-- Extend the leases a claim still holds (turns still waiting for a free lane, a slow send), so
-- no other worker takes them over meanwhile. The token stays the claim's.
-- KEYS[1] schedule zset; KEYS[2] leases hash
-- ARGV[1] the new expiry, epoch ms; ARGV[2] the claim's token; ARGV[3..] the members
-- Returns the members whose lease was extended: one another claim took over, or released
-- meanwhile, is left alone.
local renewed, scored = {}, {}
for i = 3, #ARGV do
  if holds(KEYS[2], ARGV[i], ARGV[2]) then
    renewed[#renewed + 1] = ARGV[i]
    add(scored, ARGV[1], ARGV[i])
  end
end
if #scored > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(scored))
end
return renewed
