-- wrk script: sends the requests of a file in order, one thread; wrk's -d ends the run.
-- usage: wrk -s bench/requests.lua URL -- <file> <path>
-- The caller sizes the file so it lasts the run (a request sent twice would be a duplicate).
-- Each line of <file>: header lines joined by TAB ("name: value"), then TAB, then the JSON body.
-- done() prints one JSON line: requests, duration_us, non-2xx, socket errors, p50/p99 latency (us).
local requests, index = {}, 0

local function build(line, path)
  local headers, fields = {}, {}
  for field in string.gmatch(line, "[^\t]+") do
    fields[#fields + 1] = field
  end
  for i = 1, #fields - 1 do
    local name, value = string.match(fields[i], "^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  return wrk.format("POST", path, headers, fields[#fields])
end

function init(args)
  for line in io.lines(args[1]) do
    requests[#requests + 1] = build(line, args[2])  -- built once: wrk shares the CPUs
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
