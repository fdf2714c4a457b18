-- Record a batch of actions ("user did X"), each once per client id, and wake each user's loops.
-- KEYS: 4 per action, then the schedule:
--   KEYS[4i-3] id marker   P{uid}:action:<id> (when the action has no id: any key, unused)
--   KEYS[4i-2] tombstone   P{uid}:tombstone
--   KEYS[4i-1] activity    P{uid}:activity
--   KEYS[4i]   timeline    P{uid}:timeline
--   KEYS[#KEYS] schedule   P:schedule
-- ARGV[1] now, epoch ms; ARGV[2] id marker TTL, seconds; ARGV[3] timeline length cap
-- then 7 per action, from ARGV[4]:
--   has id ("1"/"0"), action name, occurred at (epoch ms), how many of its earliest times to keep
--   (the largest count a loop waits for, capped; "0" when none does), the counts loops wait for
--   ("1,10" or ""), timeline entry JSON, the user's evaluation job id (eval|<uid>)
-- Reports arrive in any order, so `ts:<a>` keeps the earliest occurred-at times of the action,
-- ascending: the n-th of it is the n-th action by when it happened. It holds the L earliest of all
-- recorded (L < the count when times were left out: a smaller keep before, or data older than
-- it), so a time later than its last joins only when none was left out. A count that it cannot
-- hold gets `at:<a>:<n>` when reached: the latest time so far, an upper bound.
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

local function size(list)
  if list == '' then return 0 end
  return select(2, string.gsub(list, ',', ',')) + 1
end

-- `list` (the earliest of `before` times) with `at` placed by time, at most `keep` long: the new
-- list (nil when unchanged) and how many it holds.
local function ranked(list, before, first, last, at, keep)
  local held = size(list)
  if before == 0 or tonumber(at) >= last then  -- the latest yet: appended if the list is whole
    if held == before and held < keep then
      return (held == 0 and at or list .. ',' .. at), held + 1
    end
    return nil, held
  end
  if keep == 0 and held == 0 then return nil, 0 end
  local times = {}
  for t in string.gmatch(list, '[^,]+') do times[#times + 1] = t end
  if held == 0 then times[1] = first end  -- the earliest is always known
  local pos = #times + 1
  while pos > 1 and tonumber(times[pos - 1]) > tonumber(at) do pos = pos - 1 end
  if pos > #times and #times < before then return nil, held end  -- a left-out one may be earlier
  table.insert(times, pos, at)
  for _ = keep + 1, #times do table.remove(times) end
  return table.concat(times, ','), #times
end

local function record(k, a)
  local name, at, keep = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local activity = KEYS[k + 2]
  local current = redis.call('HMGET', activity, 'n:' .. name, 'first:' .. name, 'last:' .. name,
                              'rev', 'ts:' .. name)
  local before, at_ms = tonumber(current[1]) or 0, tonumber(at)
  local first, last = tonumber(current[2]) or at_ms, tonumber(current[3]) or at_ms
  local latest = math.max(last, at_ms)
  local fields = {'n:' .. name, before + 1, 'first:' .. name, math.min(first, at_ms),
                  'last:' .. name, latest, 'rev', (tonumber(current[4]) or 0) + 1}
  local list, held = ranked(current[5] or '', before, current[2], last, at, keep)
  if list then
    table.insert(fields, 'ts:' .. name)
    table.insert(fields, list)
  end
  if held <= before and tracked(ARGV[a + 4], before + 1) then
    table.insert(fields, 'at:' .. name .. ':' .. (before + 1))
    table.insert(fields, latest)
  end
  redis.call('HSET', activity, unpack(fields))
  redis.call('LPUSH', KEYS[k + 3], ARGV[a + 5])
  redis.call('LTRIM', KEYS[k + 3], 0, cap)
  redis.call('ZADD', schedule, 'LT', now, ARGV[a + 6])
end

for i = 0, (#KEYS - 1) / 4 - 1 do
  local k, a = i * 4 + 1, i * 7 + 4
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
