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

-- Leases. A claim draws a token from its shard's `fence` counter (INCR: unique, never reused)
-- and writes it in `leases` for every member it takes; the member's score on the schedule is
-- when the lease runs out. Whoever writes for a claim shows its token, and passes only while it
-- is the member's current one: another claim's token, or the member's release, shuts the older
-- holder out, whatever the clocks say. `leases[member]` is `<token>`, or `<token>@<ms>` once the
-- member's turn was asked for at <ms> while it was held (its release makes it due then).
local function lease_of(leases, member)
  local value = redis.call('HGET', leases, member)
  if not value then return nil, nil end
  local token, asked = string.match(value, '^([^@]*)@?(.*)$')
  return token, tonumber(asked)
end

-- Whether `token` is `member`'s current lease ("": a caller acting for no claim, a test or a
-- dry run, passes only while no worker holds the member), and when its turn was asked for
-- meanwhile (for `release`).
local function holds(leases, member, token)
  local current, asked = lease_of(leases, member)
  if token == '' then return current == nil, asked end
  return current == token, asked
end

-- Ask for `member`'s turn at `at` (epoch ms): sooner on the schedule or, while a worker holds
-- it, noted on its lease for the release. A held turn is never made due: that would let a
-- second worker claim it while the first still acts.
local function wake(schedule, leases, member, at)
  local token, asked = lease_of(leases, member)
  if token == nil then
    redis.call('ZADD', schedule, 'LT', at, member)
  elseif asked == nil or tonumber(at) < asked then
    redis.call('HSET', leases, member, token .. '@' .. at)
  end
end

-- End `member`'s lease, which the caller holds (`asked`: what `holds` said of it): its next
-- turn at `next` (epoch ms, or "" for none), sooner if it was asked for meanwhile.
local function release(schedule, leases, member, next, asked)
  redis.call('HDEL', leases, member)
  local at = tonumber(next)
  if asked ~= nil and (at == nil or asked < at) then at = asked end
  if at == nil then
    redis.call('ZREM', schedule, member)
  else
    redis.call('ZADD', schedule, at, member)
  end
end

-- Whether an email job still waits to go out in batch `batch` as attempt `seq`: stored, queued,
-- that attempt of it, in that batch, its user neither deleted, unsubscribed nor suppressed.
-- `user` is the HMGET of {'del', 'unsub', 'sup', <the job's field>}. Returns true, or why not:
-- 'gone' (deleted, or the job is), 'unsubscribed', 'suppressed', 'moved' (ended or retried).
local function waits_in(user, seq, batch)
  if user[1] or not user[4] then return 'gone' end
  if user[2] then return 'unsubscribed' end
  if user[3] then return 'suppressed' end
  local job = cjson.decode(user[4])
  if (job.status or 'queued') ~= 'queued' or tonumber(job.seq or 0) ~= tonumber(seq)
      or job.batch ~= batch then
    return 'moved'
  end
  return true
end

local function add(fields, name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

local function bumped(rev)
  return (tonumber(rev) or 0) + 1
end
