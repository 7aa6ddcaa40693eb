-- benches/collect.lua: wrk script for single-event ingest, POST /api/collect, one pageview per
-- request. Every request comes from another visitor: X-Forwarded-For walks 10.0.0.0/8 (the
-- server must run with --trusted-proxies 127.0.0.1/32), each wrk thread on its own range. The
-- website `load-test` (domain load.example) must exist: `pulse-load --create-website --rate 0
-- --duration 1` or a POST /api/websites makes it. The same script drives `http-ceiling`, which
-- answers every request 202 without reading it. Commands: BENCHMARKS.md, "HTTP, end to end".
local threads = 0
local ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

function setup(thread)
  thread:set("first", threads * 1000003)
  threads = threads + 1
end

function init(args)
  counter = first or 0
end

function request()
  counter = counter + 1
  local v = counter % 16000000
  local ip = string.format("10.%d.%d.%d", math.floor(v / 65536) % 256, math.floor(v / 256) % 256, v % 256)
  local body = string.format(
    '{"website_id":"load-test","type":"pageview","url":"https://load.example/page/%d","referrer":"https://search.example/"}',
    counter % 200)
  return wrk.format("POST", "/api/collect", {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = ua,
    ["X-Forwarded-For"] = ip,
  }, body)
end
