-- A batch's request ended, or its members were settled: keep the batch as given (its end
-- recorded before its members are settled, or to be sent again), or remove it; release its
-- lease with its next time, or keep it. Nothing happens unless the caller's token is the
-- batch's lease.
-- KEYS[1] schedule zset; KEYS[2] the batches hash
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] the caller's token
-- ("": acting for no claim, which passes only while nobody holds it);
-- ARGV[4] the batch as kept (JSON, without its lease), or "" to remove it; ARGV[5] "keep" (the
-- lease stays), or the lease released with the batch's next turn: epoch ms, or "" for none
-- Returns 1, or 0 (the token is not the batch's lease: nothing written).
local member = ARGV[2]
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if not stored then  -- ended already: only its place on the schedule may be left
  if ARGV[4] == '' then redis.call('ZREM', KEYS[1], member) end
  return ARGV[4] == '' and 1 or 0
end
local lease = cjson.decode(stored).lease
local held, asked = holds(lease, ARGV[3])
if not held then
  return 0
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  local kept = cjson.decode(ARGV[4])
  if ARGV[5] == 'keep' then kept.lease = lease end
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(kept))
end
if ARGV[5] ~= 'keep' then
  release(KEYS[1], member, ARGV[5], asked)
end
return 1
