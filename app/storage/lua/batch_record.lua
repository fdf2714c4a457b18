-- Record a batch of emails before its request: its members are the jobs whose user's turn the
-- worker still holds (another worker that took a turn over frees that user's jobs instead), and
-- the batch itself is leased on the schedule, so a crashed worker's batch is sent again, the same.
-- KEYS[1] schedule zset; KEYS[2] the batches hash
-- ARGV[1] the batch id; ARGV[2] now, epoch ms; ARGV[3] the lease, ms;
-- then triples: email job id, the attempt's seq, the lease token of its user's turn
-- Returns {the batch's lease token, the members recorded...}, or {false} when none was held.
local turns = {}
for i = 4, #ARGV, 3 do
  turns[#turns + 1] = 'eval|' .. (string.match(ARGV[i], '^email|([^|]+)|') or '')
end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(turns))  -- one read for every turn
local members, recorded = {}, {}
for n = 1, #turns do
  local at = 1 + 3 * n
  if within(scores[n], ARGV[at + 2], ARGV[3]) then
    members[#members + 1] = {ARGV[at], tonumber(ARGV[at + 1])}
    recorded[#recorded + 1] = ARGV[at]
  end
end
if #members == 0 then
  return {false}
end
local token = tonumber(ARGV[2]) + tonumber(ARGV[3])
local batch = {members = members, first = tonumber(ARGV[2]), attempts = 0}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(batch))
redis.call('ZADD', KEYS[1], token, 'batch|' .. ARGV[1])
return {tostring(token), unpack(recorded)}
