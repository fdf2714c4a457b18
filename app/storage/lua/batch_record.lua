-- Record a batch of emails before its request: its members are the jobs whose user's turn the
-- worker still holds (another worker that took a turn over frees that user's jobs instead), and
-- the batch itself is leased on the schedule, so a crashed worker's batch is sent again, the same.
-- KEYS[1] schedule zset; KEYS[2] the batches hash
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] now, epoch ms;
-- ARGV[4] the lease, ms; then quadruples: email job id, the attempt's seq, its user's turn
-- (eval|<uid>), the lease token the turn is held with
-- Returns {the batch's lease token, the members recorded...}, or {false} when none was held.
local turns = {}
for i = 7, #ARGV, 4 do
  turns[#turns + 1] = ARGV[i]
end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(turns))  -- one read for every turn
local members, recorded = {}, {}
for n = 1, #turns do
  local at = 1 + 4 * n
  if within(scores[n], ARGV[at + 3], ARGV[4]) then
    members[#members + 1] = {ARGV[at], tonumber(ARGV[at + 1])}
    recorded[#recorded + 1] = ARGV[at]
  end
end
if #members == 0 then
  return {false}
end
local token = tonumber(ARGV[3]) + tonumber(ARGV[4])
local batch = {members = members, first = tonumber(ARGV[3]), attempts = 0}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(batch))
redis.call('ZADD', KEYS[1], token, ARGV[2])
return {tostring(token), unpack(recorded)}
