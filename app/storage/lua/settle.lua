-- Record how an email's attempt ended (or when it is tried again), then say when the user's
-- turn comes next.
-- KEYS[1] the user's hash; KEYS[2] schedule; KEYS[3] dead zset; KEYS[4] outbox list;
-- KEYS[5] the loop's stats hash
-- ARGV[1] the job's field (j:...); ARGV[2] the job as stored now (JSON); ARGV[3] what happened:
-- the job's status (sent | failed | dropped) or, for a job queued again, retry | defer
-- ARGV[4] now; ARGV[5] outbox entry JSON or ""; ARGV[6] outbox length cap;
-- ARGV[7] the counter a send bumps (sent:<step>:<kind>); ARGV[8] today (UTC, yyyy-mm-dd);
-- ARGV[9] the oldest day whose counts stay apart (older ones join their totals)
-- ARGV[10] the attempt's number (the job's `seq` when it was begun); ARGV[11] the job id
-- ARGV[12] the evaluation job id; ARGV[13] the lease token held ("" if none); ARGV[14] the lease,
-- ms; ARGV[15] the next turn: "keep" (more of this turn's emails to settle: the lease stays),
-- "" (none) or epoch ms
-- Returns "settled"; "gone" (the user was deleted meanwhile); "final" (the job was already sent,
-- or ended otherwise: nothing written); "stale" (a newer attempt was begun since: nothing
-- written). A send is a fact, so "sent" lands whoever began it, over a queued, failed or dropped
-- job; nothing ever overwrites a sent job. A send counts once, a failure once per entry into the
-- dead set.
local user = redis.call('HMGET', KEYS[1], ARGV[1], 'rev', 'del')
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
local stored = cjson.decode(user[1])
local status = stored.status or 'queued'  -- a job's defaults are left out of its JSON
local outcome, action = 'settled', ARGV[3]
if status == 'sent' then
  outcome = 'final'
elseif action == 'sent' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'rev', bumped(user[2]))
  if status == 'failed' then redis.call('ZREM', KEYS[3], ARGV[11]) end
  count(ARGV[7])
  if ARGV[5] ~= '' then
    redis.call('LPUSH', KEYS[4], ARGV[5])
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
  end
elseif tonumber(stored.seq or 0) ~= tonumber(ARGV[10]) then
  outcome = 'stale'
elseif status ~= 'queued' and status ~= action then
  outcome = 'final'  -- a job queued already ended (no template, no address) is settled once
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'rev', bumped(user[2]))
  if action == 'failed' and redis.call('ZADD', KEYS[3], ARGV[4], ARGV[11]) == 1 then
    count('emails_failed')
  end
end
if ARGV[15] ~= 'keep' then
  if holds(KEYS[2], ARGV[12], ARGV[13], ARGV[14]) then
    if ARGV[15] == '' then
      redis.call('ZREM', KEYS[2], ARGV[12])
    else
      redis.call('ZADD', KEYS[2], ARGV[15], ARGV[12])
    end
  elseif ARGV[15] ~= '' then
    redis.call('ZADD', KEYS[2], 'LT', ARGV[15], ARGV[12])
  end
end
return outcome
