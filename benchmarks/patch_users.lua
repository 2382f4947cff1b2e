-- wrk script: PATCH /v1/users/{id} on a few hot users, a new name each time, counting every
-- answer that is not 200. Arguments after `--`: a run-unique prefix, the bearer token and the
-- user ids, comma-separated. Each thread takes its share of the users and cycles through them.
-- `done` prints one line starting with RESULT (JSON) that benchmarks/post_users.py reads.

local threads = {}
local next_thread_id = 0
local thread_count = 0

function setup(thread)
  thread:set("thread_id", next_thread_id)
  next_thread_id = next_thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  counter = 0
  not_created = 0
  first_failure = ""
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  local all = {}
  for id in string.gmatch(args[3], "[^,]+") do
    table.insert(all, id)
  end
  -- Thread t takes users t, t + n, t + 2n, ... (n threads: wrk numbers them in setup).
  users = {}
  local n = tonumber(args[4])
  for i = thread_id + 1, #all, n do
    table.insert(users, all[i])
  end
end

function request()
  counter = counter + 1
  local id = users[(counter % #users) + 1]
  local body = string.format('{"name":"Bench %s-%d-%d"}', prefix, thread_id, counter)
  return wrk.format("PATCH", "/v1/users/" .. id, nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    not_created = not_created + 1
    if first_failure == "" then
      first_failure = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local total_not_created = 0
  local first = ""
  for _, thread in ipairs(threads) do
    total_not_created = total_not_created + (thread:get("not_created") or 0)
    if first == "" then
      first = thread:get("first_failure") or ""
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"not_created":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, total_not_created, errors.connect,
    errors.read, errors.write, errors.status, errors.timeout
  ))
  if first ~= "" then
    io.write("FIRST_FAILURE " .. string.gsub(first, "\n", " ") .. "\n")
  end
end
