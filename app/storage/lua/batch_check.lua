-- Right before each request of a batch, first or again: which members still wait for it
-- (`waits_in`: stored, queued, this attempt, this batch, the user neither deleted, unsubscribed
-- nor suppressed). The request goes with those alone: the record's members become them, and its
-- `body` (what a request under this key may have carried) too.
-- KEYS[1] leases hash; KEYS[2] the batches hash; KEYS[2 + i] the hash of the i-th member's user
-- ARGV[1] the batch id; ARGV[2] its schedule member (batch|<id>); ARGV[3] the caller's token for
-- it; then pairs, one per member of the record as the caller read it: the seq, the job's field
-- Returns false (the caller's token is not the batch's lease: nothing written), "changed" (the
-- record's members are not the ones given: nothing written, read it again), or one verdict per
-- member, in order: "ok" or why it no longer waits (see `waits_in`).
if not holds(KEYS[1], ARGV[2], ARGV[3]) then
  return false
end
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if not stored then
  return 'changed'
end
local batch = cjson.decode(stored)
batch.members = batch.members or {}
if #batch.members ~= (#ARGV - 3) / 2 then
  return 'changed'
end
local verdicts, members, body = {}, {}, {}
for i, member in ipairs(batch.members) do
  local seq, field = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if tonumber(member[2]) ~= tonumber(seq) then
    return 'changed'
  end
  local user = redis.call('HMGET', KEYS[2 + i], 'del', 'unsub', 'sup', field)
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
  redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(batch))
end
return verdicts
