"""Server-side Lua scripts, loaded once per connection and called by SHA.

Every key a script touches arrives in KEYS and all of them share one hash tag, so the same
scripts run on Redis Cluster. The ``#!lua`` shebang makes Redis refuse the scripts outright on a
read-only replica (instead of failing at the first write), which is what a demoted master is
right after a failover: the request is then retried on the new master.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A named script and its SHA1, which is how EVALSHA refers to it."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# PUSH: append a message to each target list, unless the list is full or the message is a
# copy of one this sender already stored there (what a retry after a lost reply looks like).
# KEYS: per target i, KEYS[2i-1] the list and KEYS[2i] an aux key in the same slot:
#       for a normal channel ("c") the hash of this sender's sequence numbers applied there;
#       for a process inbox ("i") the limit the receiving process published (capacity times
#       its channels), which replaces ``capacity`` when larger.
# ARGV: [1] list ttl (ms), [2] now (ms), [3] dedupe ttl (ms), then per target i:
#       ARGV[4i] capacity, ARGV[4i+1] sequence number, ARGV[4i+2] element, ARGV[4i+3] kind.
# Returns: one status per target: 1 pushed, 0 full, 2 copy.
# Elements start with their expiry time as 13 ASCII digits (ms), so a full list can first
# drop what has expired. Sequence numbers count per (sender, list): a number above the
# highest seen leaves gaps for the numbers in between, which may still come (a reordered
# retry) and are then applied once; anything else at or below the highest is a copy.
PUSH = Script(
    "push",
    """#!lua
local MAX_GAPS = 4096

local function purge_expired(list, now)
  for _ = 1, 1000 do
    local head = redis.call('LINDEX', list, 0)
    if not head or tonumber(string.sub(head, 1, 13)) > now then break end
    redis.call('LPOP', list)
  end
  return redis.call('LLEN', list)
end

local function is_copy(applied, seq, ttl)
  local highest = tonumber(redis.call('HGET', applied, 'highest') or '0')
  local copy = false
  if seq > highest then
    for gap = math.max(highest + 1, seq - MAX_GAPS), seq - 1 do
      redis.call('HSET', applied, gap, 1)
    end
    redis.call('HSET', applied, 'highest', seq)
  else
    copy = redis.call('HDEL', applied, seq) == 0
  end
  redis.call('PEXPIRE', applied, ttl)
  return copy
end

local list_ttl, now, dedupe_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local statuses = {}
for i = 1, #KEYS / 2 do
  local list, aux = KEYS[2 * i - 1], KEYS[2 * i]
  local capacity, seq = tonumber(ARGV[4 * i]), tonumber(ARGV[4 * i + 1])
  local element, kind = ARGV[4 * i + 2], ARGV[4 * i + 3]
  if kind == 'i' then
    capacity = math.max(capacity, tonumber(redis.call('GET', aux) or '0'))
  end
  local status = 1
  if kind == 'c' and is_copy(aux, seq, dedupe_ttl) then
    status = 2
  elseif redis.call('LLEN', list) >= capacity and purge_expired(list, now) >= capacity then
    status = 0
  else
    redis.call('RPUSH', list, element)
    redis.call('PEXPIRE', list, list_ttl)
  end
  statuses[i] = status
end
return statuses
""",
)

# GROUP_ADD: add channels to a group, refresh its expiry and drop members whose time ran out.
# KEYS: [1] the group's sorted set.
# ARGV: [1] now (s), [2] group expiry (s), [3...] channel names.
# Returns: the number of channels added or refreshed.
GROUP_ADD = Script(
    "group_add",
    """#!lua
local now, expiry = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - expiry)
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('EXPIRE', KEYS[1], expiry)
return #ARGV - 2
""",
)

ALL = (PUSH, GROUP_ADD)
