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


# PUSH: append a message to each target list, unless the list is full or (for normal
# channels) this sender's message already landed there, which is what a retry after a lost
# reply looks like.
# KEYS: per target i, KEYS[2i-1] the list and KEYS[2i] its dedupe key (the list key again
#       for targets deduplicated by their single receiving process instead).
# ARGV: [1] list ttl (ms), [2] now (ms), [3] sender sequence number, [4] dedupe ttl (ms),
#       then per target i: ARGV[3+2i] capacity, ARGV[4+2i] the element.
# Returns: one status per target: 1 pushed, 0 full, 2 duplicate.
# Elements start with their expiry time as 13 ASCII digits (ms), so a full list can first
# drop what has expired.
PUSH = Script(
    "push",
    """#!lua
local function purge_expired(list, now)
  for _ = 1, 1000 do
    local head = redis.call('LINDEX', list, 0)
    if not head or tonumber(string.sub(head, 1, 13)) > now then break end
    redis.call('LPOP', list)
  end
  return redis.call('LLEN', list)
end

local list_ttl, now, seq, dedupe_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local statuses = {}
for i = 1, #KEYS / 2 do
  local list, dedupe = KEYS[2 * i - 1], KEYS[2 * i]
  local capacity, element = tonumber(ARGV[3 + 2 * i]), ARGV[4 + 2 * i]
  local status = 1
  if dedupe ~= list and tonumber(redis.call('GET', dedupe) or '0') >= seq then
    status = 2
  elseif redis.call('LLEN', list) >= capacity and purge_expired(list, now) >= capacity then
    status = 0
  else
    redis.call('RPUSH', list, element)
    redis.call('PEXPIRE', list, list_ttl)
    if dedupe ~= list then redis.call('SET', dedupe, seq, 'PX', dedupe_ttl) end
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
