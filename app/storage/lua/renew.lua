-- Extend the leases a claim still holds (turns still waiting for a free lane, a slow send), so
-- no other worker takes them over meanwhile. The token stays the claim's.
-- KEYS[1] schedule zset; KEYS[2] the batches hash; KEYS[2 + i] where the i-th member's lease
-- lives: its user's hash (eval|<uid>) or the batches hash (batch|<id>)
-- ARGV[1] the new expiry, epoch ms; ARGV[2] the claim's token; ARGV[3..] the members
-- Returns the members whose lease was extended: one another claim took over, or released
-- meanwhile, is left alone.
local renewed, scored = {}, {}
for i = 3, #ARGV do
  local member, lease = ARGV[i], nil
  if string.sub(member, 1, 6) == 'batch|' then
    lease = batch_lease(KEYS[2], member)
  else
    lease = redis.call('HGET', KEYS[i], 'lease')
  end
  if lease and holds(lease, ARGV[2]) then
    renewed[#renewed + 1] = member
    add(scored, ARGV[1], member)
  end
end
if #scored > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(scored))
end
return renewed
