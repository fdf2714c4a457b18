-- A batch's request ended, or its members were settled: keep the batch as given (its end
-- recorded before its members are settled, or to be sent again), or remove it; release its
-- lease with its next time, or keep it. Nothing happens unless the caller's token is the
-- batch's lease.
-- KEYS[1] schedule zset; KEYS[2] leases hash; KEYS[3] the batches hash
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] the caller's token;
-- ARGV[4] the batch as kept (JSON), or "" to remove it; ARGV[5] "keep" (the lease stays), or
-- the lease released with the batch's next turn: epoch ms, or "" for none
-- Returns 1, or 0 (the token is not the batch's lease: nothing written).
local member = ARGV[2]
local held, asked = holds(KEYS[2], member, ARGV[3])
if not held then
  return 0
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
end
if ARGV[5] ~= 'keep' then
  release(KEYS[1], KEYS[2], member, ARGV[5], asked)
end
return 1
