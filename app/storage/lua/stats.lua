-- Read the operator dashboard's counters in one round trip.
-- KEYS[1] dead zset P:dead; KEYS[2..] hashes to read whole (P:stats:<loop>, P:daily:<day>)
-- ARGV[1] how many dead-letter job ids to return at most (oldest first)
-- Returns {dead count, {dead job ids}, then one flat field/value list per hash, in KEYS order}
local reply = {redis.call('ZCARD', KEYS[1]),
               redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
for i = 2, #KEYS do
  reply[i + 1] = redis.call('HGETALL', KEYS[i])
end
return reply
