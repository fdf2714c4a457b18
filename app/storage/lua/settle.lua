-- Record how an email's attempt ended (or when it is tried again), then release the user's turn
-- with its next time, or keep it.
-- KEYS[1] the user's hash; KEYS[2] schedule; KEYS[3] dead zset; KEYS[4] outbox list;
-- KEYS[5] the loop's stats hash; KEYS[6] the batches hash
-- ARGV[1] the job's field (j:...); ARGV[2] the job as stored now (JSON); ARGV[3] what happened:
-- the job's status (sent | failed | dropped) or, for a job queued again, retry | defer
-- ARGV[4] now; ARGV[5] outbox entry JSON or ""; ARGV[6] outbox length cap;
-- ARGV[7] the counter a send bumps (sent:<step>:<kind>); ARGV[8] today (UTC, yyyy-mm-dd);
-- ARGV[9] the oldest day whose counts stay apart (older ones join their totals)
-- ARGV[10] the attempt's number (the job's `seq` when it was begun); ARGV[11] the job id
-- ARGV[12], ARGV[13] the lease the attempt was made under (the user's turn, or the batch it went
-- in: batch|<id>) and the caller's token for it ("" when acting for no claim)
-- ARGV[14], ARGV[15] the user's turn (eval|<uid>) and the caller's token for it ("" if none);
-- ARGV[16] the next turn: "keep" (more of this turn's emails to settle: the turn stays held),
-- "" (none) or epoch ms; ARGV[17] the counter a failure for good bumps (emails_failed, or
-- webhooks_failed for a webhook step's call)
-- Returns "settled"; "gone" (the user was deleted meanwhile); "final" (the job was already sent,
-- or ended otherwise: nothing written); "stale" (the caller's lease is not current, or a newer
-- attempt was begun since: nothing written). A send is a fact, so "sent" lands whoever began it,
-- over a queued, failed or dropped job; nothing ever overwrites a sent job. A send counts once,
-- a failure once per entry into the dead set.
local user = redis.call('HMGET', KEYS[1], ARGV[1], 'rev', 'del', 'lease')
if user[3] or not user[1] then
  return 'gone'
end
-- An email counted once, on its day: `<counter>@<day>`. The first count of a day folds the
-- days older than the ones kept apart into their `<counter>` totals, so the hash stays small.
local function count(counter)
  if redis.call('HINCRBY', KEYS[5], counter .. '@' .. ARGV[8], 1) == 1 then
    local all = redis.call('HGETALL', KEYS[5])
    for i = 1, #all, 2 do
      local total, day = string.match(all[i], '^(.-)@(%d%d%d%d%-%d%d%-%d%d)$')
      if day and day < ARGV[9] then
        redis.call('HINCRBY', KEYS[5], total, tonumber(all[i + 1]))
        redis.call('HDEL', KEYS[5], all[i])
      end
    end
  end
end
local turn, turn_token, next = ARGV[14], ARGV[15], ARGV[16]
-- whether the caller still holds the lease it made the attempt under
local function fenced()
  local under, token = ARGV[12], ARGV[13]
  if under == turn then return (holds(user[4], token)) end
  return (holds(batch_lease(KEYS[6], under), token))
end
local stored = cjson.decode(user[1])
local status = job_status(stored)
local outcome, action, fields = 'settled', ARGV[3], {}
if status == 'sent' then
  outcome = 'final'
elseif action == 'sent' then
  add(fields, ARGV[1], ARGV[2])
  add(fields, 'rev', bumped(user[2]))
  if status == 'failed' then redis.call('ZREM', KEYS[3], ARGV[11]) end
  count(ARGV[7])
  if ARGV[5] ~= '' then
    redis.call('LPUSH', KEYS[4], ARGV[5])
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
  end
elseif job_seq(stored) ~= tonumber(ARGV[10]) or not fenced() then
  return 'stale'
elseif status ~= 'queued' and status ~= action then
  outcome = 'final'  -- a job queued already ended (no template, no address) is settled once
else
  add(fields, ARGV[1], ARGV[2])
  add(fields, 'rev', bumped(user[2]))
  if action == 'failed' and redis.call('ZADD', KEYS[3], ARGV[4], ARGV[11]) == 1 then
    count(ARGV[17])
  end
end
if next ~= 'keep' then
  local held, asked = holds(user[4], turn_token)
  if turn_token ~= '' and held then
    add(fields, 'lease', '')
    release(KEYS[2], turn, next, asked)
  elseif next ~= '' then
    wake(KEYS[2], turn, user[4], next, fields)
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
return outcome
