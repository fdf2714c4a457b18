-- Record a batch of actions ("user did X"), each once per client id, and wake each user's loops.
-- KEYS: 4 per action, then the schedule:
--   KEYS[4i-3] id marker   P{uid}:action:<id> (when the action has no id: any key, unused)
--   KEYS[4i-2] tombstone   P{uid}:tombstone
--   KEYS[4i-1] activity    P{uid}:activity
--   KEYS[4i]   timeline    P{uid}:timeline
--   KEYS[#KEYS] schedule   P:schedule
-- ARGV[1] now, epoch ms; ARGV[2] id marker TTL, seconds; ARGV[3] timeline length cap
-- then 6 per action, from ARGV[4]:
--   has id ("1"/"0"), action name, occurred at (epoch ms), counts to timestamp ("1,10" or ""),
--   timeline entry JSON, the user's evaluation job id (eval|<uid>)
-- Returns {accepted, duplicates}; an action for a deleted user is accepted and dropped.
local now, id_ttl, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]) - 1
local schedule = KEYS[#KEYS]
local accepted, duplicates = 0, 0
local unpack = unpack or table.unpack  -- Lua 5.1 on Redis; 5.4 in fakeredis

local function tracked(list, count)
  for n in string.gmatch(list, '[^,]+') do
    if tonumber(n) == count then return true end
  end
  return false
end

local function record(k, a)
  local name, at = ARGV[a + 1], tonumber(ARGV[a + 2])
  local activity = KEYS[k + 2]
  local current = redis.call('HMGET', activity, 'n:' .. name, 'first:' .. name, 'last:' .. name,
                              'rev')
  local count = (tonumber(current[1]) or 0) + 1
  local first, last = tonumber(current[2]) or at, tonumber(current[3]) or at
  local fields = {'n:' .. name, count, 'first:' .. name, math.min(first, at),
                  'last:' .. name, math.max(last, at), 'rev', (tonumber(current[4]) or 0) + 1}
  if tracked(ARGV[a + 3], count) then
    table.insert(fields, 'at:' .. name .. ':' .. count)
    table.insert(fields, at)
  end
  redis.call('HSET', activity, unpack(fields))
  redis.call('LPUSH', KEYS[k + 3], ARGV[a + 4])
  redis.call('LTRIM', KEYS[k + 3], 0, cap)
  redis.call('ZADD', schedule, 'LT', now, ARGV[a + 5])
end

for i = 0, (#KEYS - 1) / 4 - 1 do
  local k, a = i * 4 + 1, i * 6 + 4
  if ARGV[a] == '1' and not redis.call('SET', KEYS[k], now, 'NX', 'EX', id_ttl) then
    duplicates = duplicates + 1
  else
    accepted = accepted + 1
    if redis.call('EXISTS', KEYS[k + 1]) == 0 then
      record(k, a)
    end
  end
end
return {accepted, duplicates}
