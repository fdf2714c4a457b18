-- Unsubscribe a user: no further loop email; queued emails are dropped.
-- KEYS[1] the user's hash
-- ARGV[1] now, epoch ms; then pairs: a job's field, the job as dropped (JSON), one per job
-- queued when the snapshot was read
-- Returns how many queued jobs were dropped, or -1 when the user is deleted or not stored (then
-- nothing is written: an unsubscribe must not bring a deleted user back).
local wanted = {'del', 'p', 'unsub', 'rev'}
for i = 2, #ARGV, 2 do wanted[#wanted + 1] = ARGV[i] end
local user = redis.call('HMGET', KEYS[1], unpack(wanted))
if user[1] or not user[2] then
  return -1
end
local fields = {'unsub', user[3] or ARGV[1], 'rev', bumped(user[4])}
local dropped = 0
for i = 2, #ARGV, 2 do
  -- a job may have been sent since it was read; only a job still queued is dropped
  local job = user[4 + i / 2]
  if job and job_status(cjson.decode(job)) == 'queued' then
    add(fields, ARGV[i], ARGV[i + 1])
    dropped = dropped + 1
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
return dropped
