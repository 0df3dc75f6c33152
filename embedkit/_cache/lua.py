"""The Lua script behind `RedisQuota`: one atomic call reports and leases.

Everything a fleet of processes shares lives in three keys under one hash tag (so a Redis
Cluster keeps them on one node): `state` (the buckets, the pause, the learned pace),
`seen` (process → its latest call, for the share of the rate each one leases) and `ok` (the
fleet's answers per tenth of a second, for learning the pace). Time is Redis's own `TIME`,
so the hosts' clocks never matter, and dues go back as seconds from now.

A bucket answers a lease of n permits with its balance before the take (`tokens0`): the
k-th permit is due `max(0, (k - tokens0) / rate)` seconds from now, so a block of permits
costs one number, not a list. Lua numbers that Redis would truncate to integers go back
as strings.

The learned pace follows `embedkit.ray`'s `_FleetPace` (itself `LearnedRate`'s rules), kept
simple for a script: the answers every process reported over the last second, cut to 97%
of that on a 429 (at most halved at once unless the server kept refusing), no second cut
within 0.25 s, and additive growth with each reported success.
"""

from __future__ import annotations

__all__ = ["SYNC_SCRIPT"]

SYNC_SCRIPT = r"""
local S, SEEN, OK = KEYS[1], KEYS[2], KEYS[3]
local worker = ARGV[1]
local want = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local rates = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local pause, returned = tonumber(ARGV[8]), tonumber(ARGV[9])
local successes, limited = tonumber(ARGV[10]), tonumber(ARGV[11])
local learn, ttl = tonumber(ARGV[12]), tonumber(ARGV[13])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6

local function num(field, default)
  local v = redis.call('HGET', S, field)
  if v then return tonumber(v) end
  return default
end

-- the pace learned from 429s (only while no request rate is configured)
local lr = num('lr', nil)
if rates[1] == 0 and learn == 1 then
  local slot = math.floor(now * 10)
  if successes > 0 then redis.call('HINCRBY', OK, slot, successes) end
  local slots = redis.call('HGETALL', OK)
  local kept = {}
  for i = 1, #slots, 2 do
    local s = tonumber(slots[i]) / 10
    if s < now - 2 then
      redis.call('HDEL', OK, slots[i])
    else
      kept[#kept + 1] = {s, tonumber(slots[i + 1])}
    end
  end
  local last429 = num('l429', -1e18)
  if successes > 0 and lr and now - last429 >= 0.25 then
    local factor = 1
    if num('conf', 0) == 0 then factor = 50 elseif now - last429 >= 2 then factor = 10 end
    lr = lr + successes * 0.02 * factor
  end
  if limited > 0 then
    local since = num('rsince', -1e18)
    if now - last429 > 1 then since = now; redis.call('HSET', S, 'rsince', since) end
    redis.call('HSET', S, 'l429', now)
    if now - num('lcut', -1e18) >= 0.25 then
      local from = now - 1
      local refusing = now - since >= 0.2
      if refusing and since > from then from = since end
      local total = 0
      for _, entry in ipairs(kept) do
        if entry[1] >= from - 0.1 then total = total + entry[2] end
      end
      local confident = total >= 16
      redis.call('HSET', S, 'conf', confident and 1 or 0)
      local new
      if total > 0 then
        new = math.max(0.1, total / math.max(now - from, 0.05) * 0.97)
        if lr and not (refusing and confident) then new = math.max(new, lr / 2) end
      elseif lr then
        new = lr / 2
      end
      if new and (not lr or new < lr) then
        lr = new
        redis.call('HSET', S, 'lcut', now)
        redis.call('HINCRBY', S, 'cuts', 1)
      end
    end
  end
  if lr then redis.call('HSET', S, 'lr', lr) end
end
local rate1 = rates[1]
if rate1 == 0 and lr then rate1 = lr end
local use = {rate1, rates[2], rates[3]}

-- the pause after a 429, for everyone
local untl = num('until', 0)
local pauses = num('pauses', 0)
if pause > 0 and now + pause > untl then
  untl = now + pause
  pauses = pauses + 1
  redis.call('HSET', S, 'until', untl, 'pauses', pauses)
end
local left = math.max(0, untl - now)

-- this process's share: the active processes split the request rate
redis.call('HSET', SEEN, worker, now)
local seen = redis.call('HGETALL', SEEN)
local active = 0
for i = 1, #seen, 2 do
  if tonumber(seen[i + 1]) < now - 1 then
    redis.call('HDEL', SEEN, seen[i])
  else
    active = active + 1
  end
end

-- the buckets: r (requests), i (inputs), k (tokens); burst a tenth of a second's rate
local out = {}
local names = {'r', 'i', 'k'}
for b = 1, 3 do
  local rate = use[b]
  local tokens0 = 0
  local granted = 0
  if rate > 0 then
    local burst = math.max(1, rate / 10)
    if b == 1 and rates[1] == 0 then burst = 1 end
    local tokens = num(names[b] .. 't', burst)
    local last = num(names[b] .. 'l', now)
    tokens = math.min(burst, tokens + (now - last) * rate)
    if b == 1 and returned > 0 then tokens = math.min(burst, tokens + returned) end
    if pause > 0 then tokens = math.min(tokens, -pause * rate) end
    granted = want[b]
    if b == 1 and granted > 0 then
      granted = math.min(granted, math.max(1, math.ceil(rate * 0.1 / math.max(1, active))))
    end
    tokens0 = tokens
    redis.call('HSET', S, names[b] .. 't', tokens - granted, names[b] .. 'l', now)
  end
  out[b] = {tostring(rate), tostring(tokens0), granted}
end

for _, key in ipairs({S, SEEN, OK}) do redis.call('PEXPIRE', key, ttl) end
return {out[1], out[2], out[3], tostring(left), pauses, active, tostring(num('cuts', 0))}
"""
