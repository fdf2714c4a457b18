-- Record how an email job's attempt ended (or when it is tried again) and release its lease.
-- KEYS[1] jobs hash P{uid}:jobs; KEYS[2] leases; KEYS[3] schedule; KEYS[4] dead; KEYS[5] timeline
-- KEYS[6] outbox list; KEYS[7] the loop's stats hash; KEYS[8] today's daily hash
-- KEYS[9] lease tokens hash P:lease_tokens; KEYS[10] attempts hash P{uid}:attempts
-- ARGV[1] job id; ARGV[2] job JSON; ARGV[3] what to do: the job's status (sent | failed |
-- dropped) or, for a queued job, retry | defer
-- ARGV[4] retry due at (epoch ms) or ""; ARGV[5] now; ARGV[6] timeline entry JSON;
-- ARGV[7] timeline length cap; ARGV[8] outbox entry JSON or ""; ARGV[9] outbox length cap
-- ARGV[10] loop id; ARGV[11] funnel counter a send bumps ("sent", "nudged" or "");
-- ARGV[12] daily hash TTL, seconds; ARGV[13] the lease token the worker holds ("" if none)
-- ARGV[14] for "defer" (the attempt never reached Resend: a 429, a concurrent request, our own
-- rate limit): when that attempt started, so it is not counted; else ""
-- Returns "settled"; "gone" (the user was deleted meanwhile); "final" (the job was already sent,
-- or ended while this worker held it: nothing written); "stale" (this worker's lease was taken
-- over: nothing written). A send is a fact, so "sent" lands even from a stale lease, over a
-- queued, failed or dropped job; nothing ever overwrites a sent job. A send counts once, a failure
-- once per entry into the dead set.
local id, outcome = ARGV[1], ARGV[3]
local mine = (redis.call('HGET', KEYS[9], id) or '') == ARGV[13]
local function release()
  if mine then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[9], id)
  end
end
local function count(event, funnel)
  redis.call('HINCRBY', KEYS[7], 'emails_' .. event, 1)
  if funnel ~= '' then redis.call('HINCRBY', KEYS[7], funnel, 1) end
  -- the day's hash expires once, when one of its counters first appears, not at every send
  if redis.call('HINCRBY', KEYS[8], ARGV[10] .. ':' .. event, 1) == 1 then
    redis.call('EXPIRE', KEYS[8], ARGV[12])
  end
end
local function note(list, entry, cap)
  redis.call('LPUSH', list, entry)
  redis.call('LTRIM', list, 0, tonumber(cap) - 1)
end
local before = redis.call('HGET', KEYS[1], id)
if not before then
  release()
  return 'gone'
end
local status = cjson.decode(before).status
if status == 'sent' then
  release()
  return 'final'
end
if outcome == 'sent' then
  redis.call('HSET', KEYS[1], id, ARGV[2])
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[9], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  count('sent', ARGV[11])
  note(KEYS[5], ARGV[6], ARGV[7])
  if ARGV[8] ~= '' then note(KEYS[6], ARGV[8], ARGV[9]) end
  return 'settled'
end
if not mine then
  return 'stale'
end
release()
-- a job queued already ended (failed to render, no address) is settled once as what it is
if status ~= 'queued' and status ~= outcome then
  return 'final'
end
redis.call('HSET', KEYS[1], id, ARGV[2])
if outcome == 'retry' or outcome == 'defer' then
  redis.call('ZADD', KEYS[3], ARGV[4], id)
elseif outcome == 'failed' then
  if redis.call('ZADD', KEYS[4], ARGV[5], id) == 1 then
    count('failed', '')
  end
end
if outcome == 'defer' then
  if ARGV[14] ~= '' then
    redis.call('HINCRBY', KEYS[10], id, -1)
    if redis.call('HGET', KEYS[10], id .. '^') == ARGV[14] then
      redis.call('HDEL', KEYS[10], id .. '^')
    end
  end
  return 'settled'
end
note(KEYS[5], ARGV[6], ARGV[7])
return 'settled'
