-- Move one loop's counters from schema v1 to v2 (`activation migrate`): `met` becomes the sum of
-- the time-to-activation buckets (what it exceeds them by, `tta:legacy`); `sent`, `nudged` and
-- the rest of `emails_sent` become `sent:0:action`, `sent:0:timeout` and `sent:legacy`.
-- KEYS[1] the stats hash P:stats:<loop>
-- Returns 1 when there was something to move, 0 otherwise (moved before: running again is safe).
local c = redis.call('HMGET', KEYS[1], 'met', 'sent', 'nudged', 'emails_sent')
if not (c[1] or c[2] or c[3] or c[4]) then
  return 0
end
local met, sent, nudged, all = tonumber(c[1] or '0'), tonumber(c[2] or '0'),
                               tonumber(c[3] or '0'), tonumber(c[4] or '0')
local buckets = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 4) == 'tta:' then buckets = buckets + tonumber(fields[i + 1]) end
end
local function grow(name, by)
  if by > 0 then redis.call('HINCRBY', KEYS[1], name, by) end
end
grow('tta:legacy', met - buckets)
grow('sent:0:action', sent)
grow('sent:0:timeout', nudged)
grow('sent:legacy', all - sent - nudged)
redis.call('HDEL', KEYS[1], 'met', 'sent', 'nudged', 'emails_sent')
return 1
