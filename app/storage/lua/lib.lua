-- Shared by the scripts that load it (storage.scripts prepends it to their source).
local unpack = unpack or table.unpack  -- Lua 5.1 on Redis; 5.4 in fakeredis

-- `seen` and `ids` in the user hash: 13-character entries, oldest first: 8 of a digest of the
-- id (keys.digest), then the minute it was applied, base 36. `since` is the oldest minute kept.
local function recent_has(list, digest, since)
  for i = 1, #list - 12, 13 do
    if string.sub(list, i, i + 7) == digest
        and tonumber(string.sub(list, i + 8, i + 12), 36) >= since then
      return true
    end
  end
  return false
end

-- `list` with `entry` added last: entries older than `since` left out, at most `limit` kept.
local function recent_add(list, entry, since, limit)
  local kept = {}
  for i = 1, #list - 12, 13 do
    if tonumber(string.sub(list, i + 8, i + 12), 36) >= since then
      kept[#kept + 1] = string.sub(list, i, i + 12)
    end
  end
  kept[#kept + 1] = entry
  return table.concat(kept, '', math.max(1, #kept - limit + 1))
end

-- The user's `log`, JSON lines newest first: `line` added first, at most `cap` lines kept.
local function log_add(log, line, cap)
  local text = line .. '\n' .. (log or '')
  local pos = 0
  for _ = 1, cap do
    pos = string.find(text, '\n', pos + 1, true)
    if not pos then return text end
  end
  return string.sub(text, 1, pos)
end

-- Whether the worker whose lease on `member` is `token` still holds it: its claim and renewals
-- keep the member's score within [token, token + lease); another worker's claim moves it past.
-- No token: the caller holds no lease and asks none. `within`: the same for a score read already.
local function within(score, token, lease_ms)
  if token == '' then return true end
  score = tonumber(score or '')
  local from = tonumber(token)
  return score ~= nil and score >= from and score < from + tonumber(lease_ms)
end

local function holds(schedule, member, token, lease_ms)
  if token == '' then return true end
  return within(redis.call('ZSCORE', schedule, member), token, lease_ms)
end

local function add(fields, name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

local function bumped(rev)
  return (tonumber(rev) or 0) + 1
end
