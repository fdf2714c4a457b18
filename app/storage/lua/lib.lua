-- Shared by the scripts that load it (storage.scripts prepends it to their source).
local unpack = unpack or table.unpack  -- Lua 5.1 on Redis; 5.4 in fakeredis

local function add(fields, name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

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
-- and writes it as the lease of every member it takes: a user's turn in the user hash's `lease`
-- field, a batch in its record's `lease`; the member's score on the schedule is when the lease
-- runs out. Whoever writes for a claim shows its token, and passes only while it is the
-- member's current one: another claim's token, or the member's release, shuts the older holder
-- out, whatever the clocks say. A lease is `<token>`, or `<token>@<ms>` once the turn was asked
-- for at <ms> while it was held (its release makes it due then); "" or absent: nobody holds it.
local function lease_parts(lease)
  if not lease or lease == '' then return nil, nil end
  local token, asked = string.match(lease, '^([^@]*)@?(.*)$')
  return token, tonumber(asked)
end

-- Whether `token` is the current one of `lease` (as read: "" or nil when none), and when the
-- turn was asked for meanwhile. "" (a caller acting for no claim: a test, a dry run) passes only
-- while nobody holds it.
local function holds(lease, token)
  local current, asked = lease_parts(lease)
  if token == '' then return current == nil, asked end
  return current == token, asked
end

-- Ask for a user's turn or a batch (`member`) at `at` (epoch ms), its `lease` as read: sooner on
-- the schedule or, while a worker holds it, noted on the lease for its release: returns the
-- lease to write back then (nil: nothing to write). What is held is never made due: that would
-- let a second worker claim it while the first still acts.
local function ask(schedule, member, lease, at)
  local token, asked = lease_parts(lease)
  if token == nil then
    redis.call('ZADD', schedule, 'LT', at, member)
  elseif asked == nil or tonumber(at) < asked then
    return token .. '@' .. at
  end
  return nil
end

-- `ask` for a user's turn, the lease noted added to `fields` (the caller's HSET of the user hash).
local function wake(schedule, member, lease, at, fields)
  local noted = ask(schedule, member, lease, at)
  if noted then add(fields, 'lease', noted) end
end

-- A batch's lease (`member`: batch|<id>), read from its record in the `batches` hash.
local function batch_lease(batches, member)
  local stored = redis.call('HGET', batches, string.sub(member, 7))
  return stored and cjson.decode(stored).lease
end

-- The next turn of a member whose lease ends: at `next` (epoch ms, or "" for none), sooner if
-- it was asked for meanwhile (`asked`). The caller clears the lease itself.
local function release(schedule, member, next, asked)
  local at = tonumber(next)
  if asked ~= nil and (at == nil or asked < at) then at = asked end
  if at == nil then
    redis.call('ZREM', schedule, member)
  else
    redis.call('ZADD', schedule, at, member)
  end
end

-- A stored job's status and attempt number (`records.encode_job` writes both with every job; a
-- job written before it did, by the first versions of schema 2, left a queued status and a 0
-- out: it reads as that).
local function job_status(job)
  return job.status or 'queued'
end

local function job_seq(job)
  return tonumber(job.seq or 0)
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
  if job_status(job) ~= 'queued' or job_seq(job) ~= tonumber(seq)
      or job.batch ~= batch then
    return 'moved'
  end
  return true
end

local function bumped(rev)
  return (tonumber(rev) or 0) + 1
end
