-- Queue a dead-letter email job again (an operator's retry): the user's turn sends it, or, when
-- it may have gone out in a batch whose outcome is unknown, that batch again, under its key.
-- KEYS[1] dead zset; KEYS[2] schedule; KEYS[3] the user's hash; KEYS[4] the batches hash
-- ARGV[1] the job id; ARGV[2] the job's field; ARGV[3] the job queued again (JSON);
-- ARGV[4] now, epoch ms; ARGV[5] the user's evaluation job id; ARGV[6] the batch it rejoins
-- ("" for none); ARGV[7] that batch's schedule member; ARGV[8] the job's seq
-- Returns 1 when the job was dead and is queued again; 0 when it was not dead (or its user is
-- gone); -1 when the batch it must rejoin is no longer recorded (nothing written).
local batch
if ARGV[6] ~= '' then
  local stored = redis.call('HGET', KEYS[4], ARGV[6])
  if not stored then return -1 end
  batch = cjson.decode(stored)
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  return 0
end
local user = redis.call('HMGET', KEYS[3], ARGV[2], 'rev', 'del', 'lease')
if not user[1] or user[3] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
local fields = {ARGV[2], ARGV[3], 'rev', bumped(user[2])}
if batch == nil then
  wake(KEYS[2], ARGV[5], user[4], ARGV[4], fields)
  redis.call('HSET', KEYS[3], unpack(fields))
  return 1
end
redis.call('HSET', KEYS[3], unpack(fields))
-- the batch is sent again with this member (and any others retried), its recovery afresh
local members = {}
for _, member in ipairs(batch.members or {}) do
  if member[1] ~= ARGV[1] then members[#members + 1] = member end
end
members[#members + 1] = {ARGV[1], tonumber(ARGV[8])}
batch.members, batch.outcome, batch.error, batch.attempts = members, nil, nil, 0
-- asked for now: due at once, or, while a worker holds it, noted for the release
batch.lease = ask(KEYS[2], ARGV[7], batch.lease, ARGV[4]) or batch.lease
redis.call('HSET', KEYS[4], ARGV[6], cjson.encode(batch))
return 1
