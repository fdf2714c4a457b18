-- Add one process's sightings of actions (storage.action_sightings): when each was last
-- reported, and how many times in each UTC hour. Whatever the batch holds, a handful of commands.
-- KEYS[1] P:seen (action -> last reported, epoch ms); KEYS[2..] P:seen:<yyyy-mm-dd>, the days
--   the batch's hours fall on (field `<action>@<hh>` -> count)
-- ARGV[1] how many names `seen` may hold that no loop watches; ARGV[2] a day hash's TTL (s),
--   set when this script makes it; then 4 per action, from ARGV[3]: its name, when last reported
--   (epoch ms), "1" when a loop watches it (always kept, never counted against ARGV[1]) else "",
--   and its counts "<day>@<hh>=<n>,..." (<day> the index of its key after KEYS[1]: 1 is KEYS[2])
-- Returns {actions kept, actions left out because `seen` was full}
local limit, ttl = tonumber(ARGV[1]), ARGV[2]
local names = {}
for a = 3, #ARGV, 4 do names[#names + 1] = ARGV[a] end
local last = redis.call('HMGET', KEYS[1], unpack(names))
local size  -- HLEN of `seen`: read only when a name new to it comes

local function admitted(i, watched)
  if last[i] or watched ~= '' then return true end
  size = size or redis.call('HLEN', KEYS[1])
  if size >= limit then return false end
  size = size + 1
  return true
end

-- one HMGET and one HSET for a day, however many counts (a day made now: no HMGET, an EXPIRE)
local function add_counts(key, counts)
  local fields = {}
  for field in pairs(counts) do fields[#fields + 1] = field end
  table.sort(fields)
  local made = redis.call('EXISTS', key) == 0
  local before = made and {} or redis.call('HMGET', key, unpack(fields))
  local values = {}
  for i, field in ipairs(fields) do
    add(values, field, string.format('%d', (tonumber(before[i]) or 0) + counts[field]))
  end
  redis.call('HSET', key, unpack(values))
  if made then redis.call('EXPIRE', key, ttl) end
end

local seen, days, dropped = {}, {}, 0
for i, name in ipairs(names) do
  local a = 3 + (i - 1) * 4
  if admitted(i, ARGV[a + 2]) then
    if not last[i] or tonumber(ARGV[a + 1]) > tonumber(last[i]) then
      add(seen, name, ARGV[a + 1])
    end
    for day, hour, n in string.gmatch(ARGV[a + 3], '(%d+)@(%d+)=(%d+)') do
      local d = tonumber(day)
      days[d] = days[d] or {}
      days[d][name .. '@' .. hour] = tonumber(n)
    end
  else
    dropped = dropped + 1
  end
end
if #seen > 0 then redis.call('HSET', KEYS[1], unpack(seen)) end
for d = 1, #KEYS - 1 do
  if days[d] then add_counts(KEYS[d + 1], days[d]) end
end
return {#names - dropped, dropped}
