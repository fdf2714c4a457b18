-- Move one user from schema v1 to v2 (`activation migrate`): their hash written, their v1 keys
-- deleted, in one step.
-- KEYS[1] the user's v2 hash; KEYS[2..] their v1 keys
-- ARGV: field/value pairs of the v2 hash. A field already there (written by this version since
-- it started) is kept.
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
if #KEYS > 1 then
  redis.call('DEL', unpack(KEYS, 2))
end
return 1
