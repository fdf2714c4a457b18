-- Record a batch of emails before its first request. Its members are the jobs that still wait
-- for it: their user's turn still held with the claim's token, the job stored, queued, that
-- attempt, in this batch, its user neither deleted, unsubscribed nor suppressed (`waits_in`).
-- The batch itself is then leased to the claim, so a crashed worker's batch is sent again.
-- KEYS[1] schedule zset; KEYS[2] the batches hash; KEYS[2 + i] the hash of the i-th candidate's
-- user
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] now, epoch ms;
-- ARGV[4] the lease, ms; ARGV[5] the claim's token; then triples, one per candidate: email job
-- id, the attempt's seq, the job's field
-- Returns the ids of the members recorded (none: nothing was written). The record's `body` is
-- them: its first request follows at once.
local token = ARGV[5]
local recorded, members = {}, {}
for i = 1, (#ARGV - 5) / 3 do
  local at = 3 + 3 * i
  local job_id, seq, field = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local user = redis.call('HMGET', KEYS[2 + i], 'del', 'unsub', 'sup', field, 'lease')
  if holds(user[5], token) and waits_in(user, seq, ARGV[1]) == true then
    recorded[#recorded + 1] = job_id
    members[#members + 1] = {job_id, tonumber(seq)}
  end
end
if #members == 0 then
  return {}
end
-- its first request follows at once: what it carries is written now (`body`)
local batch = {members = members, body = recorded, first = tonumber(ARGV[3]), attempts = 0,
               lease = token}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(batch))
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[2])
return recorded
