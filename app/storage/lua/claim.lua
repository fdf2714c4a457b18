-- Claim members of the schedule the caller found due (a user's turn or a batch), under one
-- lease: those still due are taken, the claim draws a token from the shard's fence counter and
-- writes it as each one's lease (the user hash's `lease`, the batch record's `lease`), and each
-- one's score moves to when the lease runs out, so a crashed or stalled worker's members come
-- back then, and its token no longer passes once another claim took them (see `holds` in
-- lib.lua). The worker reads the due members itself first (a look at the schedule's first entry
-- when idle, then the due ones), so every key written here is one it names.
-- KEYS[1] schedule zset; KEYS[2] fence counter; KEYS[3] the batches hash; KEYS[3 + i] where the
-- i-th candidate's lease lives: its user's hash (eval|<uid>) or the batches hash (batch|<id>)
-- ARGV[1] now, epoch ms; ARGV[2] lease length, ms; ARGV[3..] the candidates
-- Returns {when to look again (epoch ms) or false, the claim's token or false, member, ...}
local candidates = {unpack(ARGV, 3)}
local claimed = {}
if #candidates > 0 then
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(candidates))
  local now = tonumber(ARGV[1])
  for i, member in ipairs(candidates) do
    if scores[i] and tonumber(scores[i]) <= now then  -- still due: nobody claimed it meanwhile
      claimed[#claimed + 1] = i
    end
  end
end
local token = false
if #claimed > 0 then
  token = tostring(redis.call('INCR', KEYS[2]))
  local expiry = tonumber(ARGV[1]) + tonumber(ARGV[2])
  local scored = {}
  for _, i in ipairs(claimed) do
    local member = candidates[i]
    add(scored, expiry, member)
    if string.sub(member, 1, 6) == 'batch|' then
      local id = string.sub(member, 7)
      local stored = redis.call('HGET', KEYS[3], id)
      if stored then
        local batch = cjson.decode(stored)
        batch.lease = token
        redis.call('HSET', KEYS[3], id, cjson.encode(batch))
      end
    else
      redis.call('HSET', KEYS[3 + i], 'lease', token)
    end
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(scored))
end
-- look again when the next turn is due or the first lease runs out, whichever is sooner
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {first[2] or false, token}
for _, i in ipairs(claimed) do
  result[#result + 1] = candidates[i]
end
return result
