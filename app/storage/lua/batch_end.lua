-- A batch's request ended: record how (before its members are settled), keep the batch, as
-- given, to be sent again at a time, or remove it (every member settled); unless another worker
-- took the batch over.
-- KEYS[1] schedule zset; KEYS[2] the batches hash
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] the lease token held;
-- ARGV[4] the lease, ms; ARGV[5] the batch as kept (JSON), or "" to remove it; ARGV[6] when it is
-- sent again, epoch ms, or "" (its lease stays)
-- Returns 1, or 0 (another worker holds the batch: nothing written).
local member = ARGV[2]
if not holds(KEYS[1], member, ARGV[3], ARGV[4]) then
  return 0
end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], member)
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
  if ARGV[6] ~= '' then
    redis.call('ZADD', KEYS[1], ARGV[6], member)
  end
end
return 1
