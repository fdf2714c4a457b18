-- Extend the leases a worker still holds (a send slower than a third of the lease, or jobs of a
-- claim still waiting for a free lane), so no other worker takes them over meanwhile.
-- KEYS[1] leases zset P:leases; KEYS[2] lease tokens hash P:lease_tokens
-- ARGV[1] the new expiry, epoch ms; ARGV[2] the claim's token; ARGV[3..] job ids
-- Returns how many leases were extended: a job whose token is not this one (taken back after an
-- expiry, or settled meanwhile) is left alone.
local unpack = unpack or table.unpack
local ids = {unpack(ARGV, 3)}
local held = redis.call('HMGET', KEYS[2], unpack(ids))
local renewed = {}
for i, id in ipairs(ids) do
  if held[i] == ARGV[2] then
    table.insert(renewed, ARGV[1])
    table.insert(renewed, id)
  end
end
if #renewed > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(renewed))
end
return #renewed / 2
