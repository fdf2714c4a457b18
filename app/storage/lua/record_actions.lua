-- Record a batch of actions ("user did X"), each once per client id, and wake the user's loops
-- when a count a loop waits for is reached.
-- KEYS[i] the hash of the i-th action's user (P{uid}); KEYS[#KEYS] schedule P:schedule
-- ARGV[1] now, epoch ms; ARGV[2] the oldest minute `ids` keeps; ARGV[3] IDS_LIMIT;
-- ARGV[4] the log's length cap; then 8 per action, from ARGV[5]:
--   its `ids` entry ("" when it has no id), action name, occurred at (epoch ms), how many of its
--   earliest times to keep (the largest count a loop waits for, capped; "0" when none does), the
--   counts loops wait for ("1,10" or ""), a log line ("" for none: an action without properties
--   is all in its counts), the user's evaluation job id (eval|<uid>), and the filtered counts
--   its properties match ("" or "<name>#<digest>/<keep>/<counts> ...": each counted like the
--   action itself, in its own field `a:<name>#<digest>`)
-- The action's field `a:<name>` is `<count>,<first>,<last>[;<times>[;<bounds>]]`, <times> as
-- offsets from <first>. Reports arrive
-- in any order, so <times> keeps the earliest occurred-at times, ascending: the n-th of them is
-- the n-th action by when it happened. It holds the L earliest of all recorded (L < the count when
-- times were left out: a smaller keep before), so a time later than its last joins only when none
-- was left out. A count it cannot hold gets a bound `<n>=<ms>` when reached: the latest time so
-- far, an upper bound. `rev` moves only when what a loop reads moved (a time it keeps, or a count
-- it waits for), and the user's turn comes when such a count is reached.
-- Returns {accepted, duplicates}; an action for a deleted user is accepted and dropped.
local schedule = KEYS[#KEYS]
local now, since, id_limit, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local accepted, duplicates = 0, 0

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

-- Every time of a comma-separated list moved by `by` ms (the kept times are stored as offsets
-- from the action's first time: a few digits each instead of thirteen).
local function shifted(list, by)
  local out = {}
  for t in string.gmatch(list, '[^,]+') do out[#out + 1] = string.format('%d', tonumber(t) + by) end
  return table.concat(out, ',')
end

-- One count moved by an action at `at`: the field's new value, whether a kept time moved, and
-- whether a count a loop waits for was reached.
local function counted(stored, at, keep, counts)
  local head, rest = string.match(stored, '^([^;]*);?(.*)$')
  local offsets, bounds = string.match(rest, '^([^;]*);?(.*)$')
  local before, first, last = string.match(head, '^(%d+),(%d+),(%d+)$')
  before = tonumber(before) or 0
  local at_ms = tonumber(at)
  first, last = tonumber(first) or at_ms, tonumber(last) or at_ms
  local list = shifted(offsets, first)
  local latest = math.max(last, at_ms)
  local new_list, held = ranked(list, before, first, last, at, keep)
  local waited = tracked(counts, before + 1)
  if held <= before and waited then
    bounds = (bounds == '' and '' or bounds .. ',') .. (before + 1) .. '=' .. latest
  end
  local earliest = math.min(first, at_ms)
  local value = (before + 1) .. ',' .. earliest .. ',' .. latest
  local kept = shifted(new_list or list, -earliest)
  if kept ~= '' or bounds ~= '' then value = value .. ';' .. kept end
  if bounds ~= '' then value = value .. ';' .. bounds end
  return value, new_list ~= nil, waited
end

local function extras(list)
  local out = {}
  for entry in string.gmatch(list, '[^ ]+') do
    local name, keep, counts = string.match(entry, '^([^/]+)/(%d+)/(.*)$')
    out[#out + 1] = {name, tonumber(keep), counts}
  end
  return out
end

local function record(key, a, user, filtered)
  local name, at = ARGV[a + 1], ARGV[a + 2]
  local value, moved, waited = counted(user[3] or '', at, tonumber(ARGV[a + 3]), ARGV[a + 4])
  local fields = {'a:' .. name, value}
  for j, extra in ipairs(filtered) do
    local v, m, w = counted(user[6 + j] or '', at, extra[2], extra[3])
    add(fields, 'a:' .. extra[1], v)
    moved, waited = moved or m, waited or w
  end
  if moved or waited then add(fields, 'rev', bumped(user[4])) end
  if ARGV[a] ~= '' then add(fields, 'ids', recent_add(user[2] or '', ARGV[a], since, id_limit)) end
  if ARGV[a + 5] ~= '' then add(fields, 'log', log_add(user[6], ARGV[a + 5], cap)) end
  if waited then wake(schedule, ARGV[a + 6], user[5], now, fields) end
  redis.call('HSET', key, unpack(fields))
end

for i = 1, #KEYS - 1 do
  local a = 5 + (i - 1) * 8
  local wanted = {'del', 'ids', 'a:' .. ARGV[a + 1], 'rev', 'lease'}
  wanted[6] = ARGV[a + 5] ~= '' and 'log' or 'rev'
  local filtered = extras(ARGV[a + 7])
  for j, extra in ipairs(filtered) do wanted[6 + j] = 'a:' .. extra[1] end
  local user = redis.call('HMGET', KEYS[i], unpack(wanted))
  if ARGV[a] ~= '' and recent_has(user[2] or '', string.sub(ARGV[a], 1, 8), since) then
    duplicates = duplicates + 1
  else
    accepted = accepted + 1
    if not user[1] then record(KEYS[i], a, user, filtered) end
  end
end
return {accepted, duplicates}
