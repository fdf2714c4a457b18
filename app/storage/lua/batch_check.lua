-- Right before each request of a batch, first or again: which members still wait for it
-- (`waits_in`: stored, queued, this attempt, this batch, the user neither deleted, unsubscribed
-- nor suppressed). The request goes with those alone: the record's members become them, and its
-- `body` (what a request under this key may have carried) too.
-- KEYS[1] the batches hash; KEYS[1 + i] the hash of the i-th member's user
-- ARGV[1] the batch id; ARGV[2] the caller's token for the batch; then pairs, one per member
-- of the record as the caller read it: the seq, the job's field
-- Returns false (the caller's token is not the batch's lease: nothing written), "changed" (the
-- record's members are not the ones given: nothing written, read it again), or one verdict per
-- member, in order: "ok" or why it no longer waits (see `waits_in`).
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then
  return false
end
local batch = cjson.decode(stored)
if not holds(batch.lease, ARGV[2]) then
  return false
end
batch.members = batch.members or {}
if #batch.members ~= (#ARGV - 2) / 2 then
  return 'changed'
end
local verdicts, members, body = {}, {}, {}
for i, member in ipairs(batch.members) do
  local seq, field = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if tonumber(member[2]) ~= tonumber(seq) then
    return 'changed'
  end
  local user = redis.call('HMGET', KEYS[1 + i], 'del', 'unsub', 'sup', field)
  local verdict = waits_in(user, seq, ARGV[1])
  if verdict == true then
    verdicts[i] = 'ok'
    members[#members + 1] = member
    body[#body + 1] = member[1]
  else
    verdicts[i] = verdict
  end
end
if #members > 0 then
  batch.members, batch.body = members, body
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(batch))
end
return verdicts
