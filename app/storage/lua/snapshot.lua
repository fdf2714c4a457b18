-- Read everything about one user in one round trip.
-- KEYS[1] user hash P{uid}:user; KEYS[2] activity hash; KEYS[3] loops hash; KEYS[4] jobs hash;
-- KEYS[5] timeline list; KEYS[6] tombstone
-- ARGV[1] "full" to include jobs and timeline, anything else to skip them (what the engine needs)
-- Returns {{profile, version, registered_at, unsubscribed_at, suppressed_at, suppression}, activity as a flat field/value list,
--          loops as a flat list, jobs as a flat list or {}, timeline list or {}, deleted 0/1}
local full = ARGV[1] == 'full'
local jobs, timeline = {}, {}
if full then
  jobs = redis.call('HGETALL', KEYS[4])
  timeline = redis.call('LRANGE', KEYS[5], 0, -1)
end
return {
  redis.call('HMGET', KEYS[1], 'profile', 'version', 'registered_at', 'unsubscribed_at',
             'suppressed_at', 'suppression'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  jobs,
  timeline,
  redis.call('EXISTS', KEYS[6]),
}
