-- wrk script: POST /rest/users, each request a new user (a distinct email).
-- usage: wrk -t2 -c32 -d10s -s bench/post_users.lua http://127.0.0.1:P -- "Basic <base64 api:key>"

local threads_made = 0

function setup(thread)
  threads_made = threads_made + 1
  thread:set("thread_id", threads_made)
end

function init(args)
  auth = args[1]
  counter = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"email":"wrk-%d-%d@example.com","first_name":"Wrk","custom_i_1":%d}',
    thread_id or 0, counter, counter
  )
  return wrk.format("POST", "/rest/users", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = auth,
  }, body)
end
