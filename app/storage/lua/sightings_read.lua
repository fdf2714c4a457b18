-- Read the sightings of actions (storage.action_sightings); forget the names not reported for long.
-- KEYS[1] P:seen (action -> last reported, epoch ms); KEYS[2..] P:seen:<yyyy-mm-dd>, the days
--   to read
-- ARGV[1] epoch ms: a name last reported before it is removed from `seen`, unless it is one of
--   ARGV[2..], the names loops watch (kept however old)
-- Returns {`seen` as kept, flat; then each day's hash, flat, in KEYS order}
local cutoff = tonumber(ARGV[1])
local watched = {}
for i = 2, #ARGV do watched[ARGV[i]] = true end
local seen = redis.call('HGETALL', KEYS[1])
local kept, old = {}, {}
for i = 1, #seen, 2 do
  if tonumber(seen[i + 1]) < cutoff and not watched[seen[i]] then
    old[#old + 1] = seen[i]
  else
    add(kept, seen[i], seen[i + 1])
  end
end
if #old > 0 then redis.call('HDEL', KEYS[1], unpack(old)) end
local reply = {kept}
for i = 2, #KEYS do reply[i] = redis.call('HGETALL', KEYS[i]) end
return reply
