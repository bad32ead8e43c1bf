#!lua
-- The PUSH script as it was at 3b3d015 (channels_ha/_scripts.py), before the de-duplication
-- record became a bit window: a hash with the field 'highest' and a field per gap. Kept for
-- tests/test_dedupe_record.py, which runs it beside the current script and compares what
-- they decide. Not used by the layer.
local MAX_GAPS = 4096
local RECENT_INBOX = 256  -- LPOS costs ~20 µs per 1,000 entries, on the full path only

local function purge_expired(list, now)
  for _ = 1, 1000 do
    local head = redis.call('LINDEX', list, 0)
    if not head then break end
    local expires = tonumber(string.sub(head, 1, 13))
    if expires and expires > now then break end
    redis.call('LPOP', list)  -- expired, or not ours (no expiry: receivers would drop it)
  end
  return redis.call('LLEN', list)
end

-- Keeps the newest MAX_GAPS gaps once there are twice as many: numbers refused for
-- capacity, or never written (a send cancelled while reconnecting), would otherwise stay
-- for as long as the sender keeps writing to the list. A retry comes within moments.
local function trim_gaps(applied)
  if redis.call('HLEN', applied) <= 2 * MAX_GAPS then return end
  local gaps = {}
  for _, field in ipairs(redis.call('HKEYS', applied)) do
    local number = tonumber(field)
    if number then gaps[#gaps + 1] = number end
  end
  table.sort(gaps)
  for i = 1, #gaps - MAX_GAPS, 1000 do
    redis.call('HDEL', applied, unpack(gaps, i, math.min(i + 999, #gaps - MAX_GAPS)))
  end
end

local function is_copy(applied, seq, ttl)
  local highest = tonumber(redis.call('HGET', applied, 'highest') or '0')
  local copy = false
  if seq > highest then
    for gap = math.max(highest + 1, seq - MAX_GAPS), seq - 1 do
      redis.call('HSET', applied, gap, 1)
    end
    if seq > highest + 1 then trim_gaps(applied) end
    redis.call('HSET', applied, 'highest', seq)
  else
    copy = redis.call('HDEL', applied, seq) == 0
  end
  redis.call('PEXPIRE', applied, ttl)
  return copy
end

local function push_targets(k0, a0)
  local list_ttl, now, dedupe_ttl = ARGV[a0 + 1], tonumber(ARGV[a0 + 2]), ARGV[a0 + 3]
  local statuses = {}
  local targets = (#ARGV - a0 - 3) / 4
  local wake = k0 + 2 * targets  -- the last wake stream key used
  for i = 1, targets do
    local list, aux = KEYS[k0 + 2 * i - 1], KEYS[k0 + 2 * i]
    local capacity, seq = tonumber(ARGV[a0 + 4 * i]), tonumber(ARGV[a0 + 4 * i + 1])
    local element, kind = ARGV[a0 + 4 * i + 2], ARGV[a0 + 4 * i + 3]
    if kind == 'i' then
      capacity = math.max(capacity, tonumber(redis.call('GET', aux) or '0'))
    else
      wake = wake + 1
    end
    local status = 1
    if kind == 'c' and is_copy(aux, seq, dedupe_ttl) then
      status = 2
    elseif redis.call('LLEN', list) >= capacity and purge_expired(list, now) >= capacity then
      status = 0
      if kind == 'c' then
        redis.call('HSET', aux, seq, 1)  -- refused: a retry is judged again, not as a copy
        trim_gaps(aux)
      elseif redis.call('LPOS', list, element, 'RANK', -1, 'MAXLEN', RECENT_INBOX) then
        status = 2  -- the write again of one stored before the inbox filled up
      end
    else
      redis.call('RPUSH', list, element)
      redis.call('PEXPIRE', list, list_ttl)
      if kind == 'c' then  -- readers waiting on the channel pop now (see POP_NORMAL)
        redis.call('XADD', KEYS[wake], 'MAXLEN', 1, '*', 'm', 1)
        redis.call('PEXPIRE', KEYS[wake], list_ttl)
      end
    end
    statuses[i] = status
  end
  return statuses
end
return push_targets(0, 0)
