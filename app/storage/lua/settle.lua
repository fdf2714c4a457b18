-- Record how an email's attempt ended (or when it is tried again), then release the user's turn
-- with its next time, or keep it.
-- KEYS[1] the user's hash; KEYS[2] schedule; KEYS[3] leases hash; KEYS[4] dead zset;
-- KEYS[5] outbox list; KEYS[6] the loop's stats hash
-- ARGV[1] the job's field (j:...); ARGV[2] the job as stored now (JSON); ARGV[3] what happened:
-- the job's status (sent | failed | dropped) or, for a job queued again, retry | defer
-- ARGV[4] now; ARGV[5] outbox entry JSON or ""; ARGV[6] outbox length cap;
-- ARGV[7] the counter a send bumps (sent:<step>:<kind>); ARGV[8] today (UTC, yyyy-mm-dd);
-- ARGV[9] the oldest day whose counts stay apart (older ones join their totals)
-- ARGV[10] the attempt's number (the job's `seq` when it was begun); ARGV[11] the job id
-- ARGV[12], ARGV[13] the lease the attempt was made under (the user's turn, or the batch it went
-- in) and the caller's token for it ("" when acting for no claim)
-- ARGV[14], ARGV[15] the user's turn (eval|<uid>) and the caller's token for it ("" if none);
-- ARGV[16] the next turn: "keep" (more of this turn's emails to settle: the turn stays held),
-- "" (none) or epoch ms
-- Returns "settled"; "gone" (the user was deleted meanwhile); "final" (the job was already sent,
-- or ended otherwise: nothing written); "stale" (the caller's lease is not current, or a newer
-- attempt was begun since: nothing written). A send is a fact, so "sent" lands whoever began it,
-- over a queued, failed or dropped job; nothing ever overwrites a sent job. A send counts once,
-- a failure once per entry into the dead set.
local user = redis.call('HMGET', KEYS[1], ARGV[1], 'rev', 'del')
if user[3] or not user[1] then
  return 'gone'
end
-- An email counted once, on its day: `<counter>@<day>`. The first count of a day folds the
-- days older than the ones kept apart into their `<counter>` totals, so the hash stays small.
local function count(counter)
  if redis.call('HINCRBY', KEYS[6], counter .. '@' .. ARGV[8], 1) == 1 then
    local all = redis.call('HGETALL', KEYS[6])
    for i = 1, #all, 2 do
      local total, day = string.match(all[i], '^(.-)@(%d%d%d%d%-%d%d%-%d%d)$')
      if day and day < ARGV[9] then
        redis.call('HINCRBY', KEYS[6], total, tonumber(all[i + 1]))
        redis.call('HDEL', KEYS[6], all[i])
      end
    end
  end
end
-- the user's turn as the caller holds it (read once: the attempt's lease is often the turn)
local turn, turn_token, next = ARGV[14], ARGV[15], ARGV[16]
local turn_held, asked
if next ~= 'keep' or (ARGV[12] == turn and ARGV[13] == turn_token) then
  turn_held, asked = holds(KEYS[3], turn, turn_token)
end
local function fenced()
  if ARGV[12] == turn and ARGV[13] == turn_token then return turn_held end
  return (holds(KEYS[3], ARGV[12], ARGV[13]))
end
local stored = cjson.decode(user[1])
local status = stored.status or 'queued'  -- a job's defaults are left out of its JSON
local outcome, action = 'settled', ARGV[3]
if status == 'sent' then
  outcome = 'final'
elseif action == 'sent' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'rev', bumped(user[2]))
  if status == 'failed' then redis.call('ZREM', KEYS[4], ARGV[11]) end
  count(ARGV[7])
  if ARGV[5] ~= '' then
    redis.call('LPUSH', KEYS[5], ARGV[5])
    redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
  end
elseif not fenced() or tonumber(stored.seq or 0) ~= tonumber(ARGV[10]) then
  return 'stale'
elseif status ~= 'queued' and status ~= action then
  outcome = 'final'  -- a job queued already ended (no template, no address) is settled once
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'rev', bumped(user[2]))
  if action == 'failed' and redis.call('ZADD', KEYS[4], ARGV[4], ARGV[11]) == 1 then
    count('emails_failed')
  end
end
if next ~= 'keep' then
  if turn_token ~= '' and turn_held then
    release(KEYS[2], KEYS[3], turn, next, asked)
  elseif next ~= '' then
    wake(KEYS[2], KEYS[3], turn, next)
  end
end
return outcome
