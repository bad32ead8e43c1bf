"""Server-side Lua scripts, loaded once per connection and called by SHA.

Every key a script touches arrives in KEYS and all of them share one hash tag, so the same
scripts run on Redis Cluster. The ``#!lua`` shebang makes Redis refuse the scripts outright on a
read-only replica (instead of failing at the first write), which is what a demoted master is
right after a failover: the request is then retried on the new master. It also makes Redis
refuse them past ``maxmemory`` (OOM, with noeviction), except those flagged ``allow-oom``:
the ones that remove data or write a little bookkeeping beside it (leaving a group,
flush(), reading a group, popping), as plain commands would go on there. The ones that add
messages or members (PUSH, GROUP_PUSH, GROUP_ADD, RETURN) are refused with Redis's OOM error.
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


# The PUSH body, shared by PUSH and GROUP_PUSH: append a message to each target list, unless
# the list is full or the message is a copy of one this sender already stored there (what a
# retry after a lost reply looks like). The targets start after KEYS[k0] and ARGV[a0]:
# KEYS: per target i, KEYS[k0+2i-1] the list and KEYS[k0+2i] an aux key in the same slot:
#       for a normal channel ("c") this sender's record of the numbers it applied there (a
#       string, see below); for a process inbox ("i") the limit the receiving process
#       published (capacity times its channels), which replaces ``capacity`` when larger.
#       After the targets, one key per normal-channel target, in their order: its wake stream
#       (see POP_NORMAL), which gets an entry when a message is pushed there. Inbox targets
#       have none.
# ARGV: [a0+1] list ttl (ms), [a0+2] now (ms), [a0+3] dedupe ttl (ms), then per target i:
#       ARGV[a0+4i] capacity, [a0+4i+1] sequence number, [a0+4i+2] element, [a0+4i+3] kind.
# Returns: one status per target: 1 pushed, 0 full, 2 copy (of one pushed before).
# Elements start with their expiry time as 13 ASCII digits (ms), so a full list can first
# drop what has expired (and what something else wrote there, which has no expiry).
# Sequence numbers count per (sender, list): a number above the highest seen leaves gaps for
# the numbers in between, which may still come (a reordered retry) and are then applied once;
# a number refused for capacity is a gap too, so that its retry is judged again. Anything
# else at or below the highest is a copy, and so is any number more than MAX_GAPS below it.
# The record holds the highest number in decimal, padded with spaces to DIGITS bytes once a
# ring follows: a bit per number (number n at bit n % RING_BITS), 1 for a gap, 0 otherwise.
# The ring spans the highest and the MAX_GAPS numbers below it; a number's bit is written as
# the highest passes it. Until a number is skipped or refused there is no ring, and an
# in-order push costs three commands on a string of a few bytes. At most DIGITS +
# RING_BITS / 8 = 529 bytes, and no step writes more than the ring.
# An inbox keeps no numbers (its receiving process drops copies), but a copy written again
# after the inbox filled up must not come back as full: send() would raise ChannelFull for a
# message that is stored, and an application retrying it would get it twice. Only a full inbox
# is searched, from its newest end (a write again follows the first within moments).
_PUSH_TARGETS = """
local MAX_GAPS = 4096
local RING_BITS = 4104  -- MAX_GAPS + 1, in whole bytes
local DIGITS = 16  -- room for every integer a Lua number holds exactly (2^53 < 10^16)
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

-- The offset (for SETBIT) of a number's bit in a record's ring.
local function bit_of(seq)
  return DIGITS * 8 + seq % RING_BITS
end

-- Gives a record its ring, every bit 0, if it has none; written whole, since a string that
-- SETBIT lengthens is given twice the room it needs.
local function add_ring(record)
  if redis.call('STRLEN', record) > DIGITS then return end
  local head = redis.call('GET', record) or ''
  head = head .. string.rep(' ', DIGITS - #head)
  redis.call('SET', record, head .. string.rep('\\0', RING_BITS / 8), 'KEEPTTL')
end

-- Sets the ring's bits from..to (positions, from <= to): whole bytes in one SETRANGE.
local function set_bits(record, from, to)
  while from <= to and from % 8 ~= 0 do
    redis.call('SETBIT', record, DIGITS * 8 + from, 1)
    from = from + 1
  end
  local bytes = math.floor((to - from + 1) / 8)
  if bytes > 0 then
    redis.call('SETRANGE', record, DIGITS + from / 8, string.rep('\\255', bytes))
    from = from + 8 * bytes
  end
  for position = from, to do
    redis.call('SETBIT', record, DIGITS * 8 + position, 1)
  end
end

-- Marks the numbers first..last as gaps (at most RING_BITS of them): one or two runs of the
-- ring, as they wrap around its end.
local function mark_gaps(record, first, last)
  add_ring(record)
  while first <= last do
    local from = first % RING_BITS
    local to = math.min(RING_BITS - 1, from + last - first)
    set_bits(record, from, to)
    first = first + to - from + 1
  end
end

-- ``digits``: the number as the sender wrote it (decimal, no leading zero), so a higher
-- number is never shorter than the one it replaces: written over it as it is.
local function is_copy(record, seq, digits, ttl)
  local head = redis.call('GETRANGE', record, 0, DIGITS)  -- one byte more with a ring
  local ring = #head > DIGITS
  local highest = tonumber(ring and string.sub(head, 1, DIGITS) or head) or 0
  local copy = false
  if seq > highest then
    if seq > highest + 1 then
      mark_gaps(record, math.max(highest + 1, seq - MAX_GAPS), seq - 1)
      ring = true
    end
    if ring then redis.call('SETBIT', record, bit_of(seq), 0) end
    redis.call('SETRANGE', record, 0, digits)
  else
    -- a gap is applied now: its bit cleared, which SETBIT answers with its old value
    copy = not ring or highest - seq > MAX_GAPS
      or redis.call('SETBIT', record, bit_of(seq), 0) == 0
  end
  redis.call('PEXPIRE', record, ttl)
  return copy
end

-- A number refused for capacity stays a gap, so that its retry is judged again.
local function mark_refused(record, seq)
  add_ring(record)
  redis.call('SETBIT', record, bit_of(seq), 1)
end

local function push_targets(k0, a0)
  local list_ttl, now, dedupe_ttl = ARGV[a0 + 1], tonumber(ARGV[a0 + 2]), ARGV[a0 + 3]
  local statuses = {}
  local targets = (#ARGV - a0 - 3) / 4
  local wake = k0 + 2 * targets  -- the last wake stream key used
  for i = 1, targets do
    local list, aux = KEYS[k0 + 2 * i - 1], KEYS[k0 + 2 * i]
    local capacity, digits = tonumber(ARGV[a0 + 4 * i]), ARGV[a0 + 4 * i + 1]
    local seq = tonumber(digits)
    local element, kind = ARGV[a0 + 4 * i + 2], ARGV[a0 + 4 * i + 3]
    if kind == 'i' then
      capacity = math.max(capacity, tonumber(redis.call('GET', aux) or '0'))
    else
      wake = wake + 1
    end
    local status = 1
    if kind == 'c' and is_copy(aux, seq, digits, dedupe_ttl) then
      status = 2
    elseif redis.call('LLEN', list) >= capacity and purge_expired(list, now) >= capacity then
      status = 0
      if kind == 'c' then
        mark_refused(aux, seq)
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
"""

# PUSH: the PUSH body over every key and argument.
PUSH = Script("push", "#!lua" + _PUSH_TARGETS + "return push_targets(0, 0)\n")

# A group's membership token: a random value that changes whenever a member joins or leaves
# (and that a master restarted empty no longer has). A sender that knows the token of the
# member list it planned from can push in one round trip: GROUP_PUSH checks the token and the
# member expiry on the server, and pushes only if the plan is still right.

# GROUP_PUSH: the PUSH body, if the group's members are still those the token stands for.
# KEYS: [1] the group's sorted set, [2] its membership token, then the PUSH targets (and
#       their wake streams).
# ARGV: [1] the token the sender planned from, [2] the membership cutoff (s: a member scored
#       at or below it has expired), then the PUSH arguments.
# Returns: the PUSH statuses, or nil (pushing nothing) when the plan is stale. A group with
# no member left is stale too: its token may outlive it for a moment (flush() deletes the two
# keys one by one), and no expiry can be checked on an empty set.
GROUP_PUSH = Script(
    "group_push",
    "#!lua"
    + _PUSH_TARGETS
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not oldest[2] or tonumber(oldest[2]) <= tonumber(ARGV[2]) then return false end
return push_targets(2, 2)
""",
)

# GROUP_MEMBERS: a group's live members and their token, dropping members whose time ran out.
# KEYS: [1] the group's sorted set, [2] its membership token.
# ARGV: [1] the membership cutoff (s), [2] a new token, set if the members changed or the
#       token is missing.
# Returns: [token or nil (no such group), members oldest first]. The token lives exactly as
# long as the group (PTTL: TTL rounds, and 0 would be refused by SET); a group emptied here
# loses it. Allowed past maxmemory: a group_send to a group without members must not fail
# there (channels_redis's reads it with plain commands); the token it may write is 16 bytes.
GROUP_MEMBERS = Script(
    "group_members",
    """#!lua flags=allow-oom
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local ttl = redis.call('PTTL', KEYS[1])
if #members == 0 or ttl <= 0 then
  redis.call('DEL', KEYS[2])
  return {false, members}
end
local token = redis.call('GET', KEYS[2])
if removed > 0 or not token then
  token = ARGV[2]
  redis.call('SET', KEYS[2], token, 'PX', ttl)
end
return {token, members}
""",
)

# A group's discards: channels discarded from it that re-assertions must not put back. Every
# process re-asserts the memberships it made (GROUP_ADD in 'reassert' mode), and one that
# did not see a discard (another process's group_discard, a flush(), or one on another event
# loop of its own) must not undo it: a re-assertion skips a channel whose record holds, and
# tells its process, which forgets the membership. A join by the application clears the
# record: it is a real join again. Each record is scored by when it stops holding (the
# discard's time plus how long it is kept), so that records kept for different times share
# one set: a shorter record never shortens a longer one (ZADD GT), nor the key's expiry.
_RECORD_DISCARDS = """
-- At most a few thousand channels per call (unpack's stack).
local function record_discards(key, now, kept, channels)
  if #channels == 0 then return end
  local args = {}
  for i, channel in ipairs(channels) do
    args[2 * i - 1] = now + kept
    args[2 * i] = channel
  end
  redis.call('ZADD', key, 'GT', unpack(args))
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local kept_ms = math.ceil(kept * 1000)
  if redis.call('PTTL', key) < kept_ms then redis.call('PEXPIRE', key, kept_ms) end
end
"""

# GROUP_ADD: add channels to a group, refresh its expiry and drop members whose time ran out;
# a new token when that changed the members.
# KEYS: [1] the group's sorted set, [2] its membership token, [3] its discards.
# ARGV: [1] now (s), [2] group expiry (s), [3] a new token, [4] the mode, then:
#       'join' (the application's group_add, which clears the channels' records): [5...]
#       channel names; returns, per channel, the score of the record it cleared, or "".
#       'reassert': [5...] pairs of a channel and the record its process's last join
#       cleared (or ""); skips a channel whose record holds, unless it is that one (the
#       join that cleared it was lost, and the record came back); returns those skipped.
GROUP_ADD = Script(
    "group_add",
    """#!lua
local now, expiry, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4]
local changed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - expiry) > 0
local discards = redis.call('EXISTS', KEYS[3]) == 1
local joining = mode == 'join'
local reply = {}
for i = 5, #ARGV, joining and 1 or 2 do
  local channel = ARGV[i]
  local ends = discards and redis.call('ZSCORE', KEYS[3], channel)
  if joining then reply[#reply + 1] = ends or '' end
  if not joining and ends and tonumber(ends) > now and tonumber(ends) ~= tonumber(ARGV[i + 1]) then
    reply[#reply + 1] = channel
  else
    if ends then redis.call('ZREM', KEYS[3], channel) end
    changed = redis.call('ZADD', KEYS[1], now, channel) == 1 or changed
  end
end
if redis.call('EXPIRE', KEYS[1], expiry) == 0 then
  redis.call('DEL', KEYS[2])  -- every channel skipped, and no member left
elseif changed or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', expiry)
else
  redis.call('EXPIRE', KEYS[2], expiry)
end
return reply
""",
)

# GROUP_DISCARD: remove a channel from a group, and record it in the group's discards; a new
# token if it was a member.
# KEYS: [1] the group's sorted set, [2] its membership token, [3] its discards.
# ARGV: [1] the channel, [2] a new token, [3] now (s), [4] how long the record holds (s).
# Returns: 1 if the channel was a member, else 0.
# Allowed past maxmemory, as channels_redis's ZREM is: a consumer that disconnects leaves its
# groups (the record and the token are a few bytes per channel).
GROUP_DISCARD = Script(
    "group_discard",
    "#!lua flags=allow-oom"
    + _RECORD_DISCARDS
    + """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
  else
    redis.call('DEL', KEYS[2])
  end
end
record_discards(KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), {ARGV[1]})
return removed
""",
)

# GROUP_FLUSH: flush() of a group: discards its members (the oldest ones first, a bounded
# number per call, so that a large group does not hold Redis up), recording each in the
# group's discards, and deletes its token. A key that is not a sorted set (something else
# wrote it) is deleted, with nothing to record.
# KEYS: [1] the group's sorted set, [2] its membership token, [3] its discards.
# ARGV: [1] now (s), [2] how long the records hold (s: the group expiry), [3] the most
#       members to discard.
# Returns: the members left (0 when the group is gone).
# Allowed past maxmemory, as channels_redis's flush() is: it frees more than its records take.
GROUP_FLUSH = Script(
    "group_flush",
    "#!lua flags=allow-oom"
    + _RECORD_DISCARDS
    + """
redis.call('DEL', KEYS[2])
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then
  redis.call('DEL', KEYS[1])
  return 0
end
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
record_discards(KEYS[3], tonumber(ARGV[1]), tonumber(ARGV[2]), members)
if #members > 0 then redis.call('ZREM', KEYS[1], unpack(members)) end
return redis.call('ZCARD', KEYS[1])
""",
)

# RETURN: put messages this process popped but will not deliver back at the head of their
# list, once: a retry after a lost reply finds the marker of the first attempt and writes
# nothing (a plain LPUSH would store them twice, and two competing receivers in different
# processes would each get a copy).
# KEYS: [1] the list, [2] the marker of this return (same slot), [3] for a normal channel,
#       its wake stream (see POP_NORMAL).
# ARGV: [1] list ttl (ms), [2] marker ttl (ms), [3...] the elements, oldest first.
# Returns: 1 if written, 0 if this return was already applied.
RETURN = Script(
    "return",
    """#!lua
if not redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[2]) then return 0 end
for i = #ARGV, 3, -1 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 'm', 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[1])
end
return 1
""",
)

# POP_NORMAL: a normal-channel reader's pop, acknowledged by its next one. The batch it pops
# stays in the reader's in-flight list until the reader's next call, which comes only after
# this reply arrived (one request at a time, on one connection): a reply lost with its
# connection is found there by the first call on the next connection ('recover'). Readers do
# not block in here (a script cannot): with nothing to pop, they wait with XREAD on the
# channels' wake streams (PUSH adds an entry to each), after the ids returned here.
# KEYS: [1] the reader's in-flight list, then n channel lists, then their n wake streams.
# ARGV: [1] count, [2] in-flight ttl (ms), [3] '1' to recover (the first call on a connection).
# Returns: {1, list, elements} popped; {2, list, elements} the in-flight batch, recovered
# (kept: its reply may be lost too); {0, ids} nothing, with each wake stream's last id;
# {3, list, error} nothing, Redis refused the pop of that list (WRONGTYPE: something else
# wrote a key there; NOPERM for that key): only that channel's receivers fail, as they would
# with a pop of their own.
# Allowed past maxmemory, as a plain pop is: it moves what it pops, and frees the last batch.
POP_NORMAL = Script(
    "pop_normal",
    """#!lua flags=allow-oom
local n = (#KEYS - 1) / 2
if ARGV[3] == '1' then
  local held = redis.call('LRANGE', KEYS[1], 0, -1)
  if #held > 0 then return {2, held[1], {unpack(held, 2)}} end
end
redis.call('DEL', KEYS[1])  -- acknowledged: this call comes after the last one's reply
-- The first list with messages, in order, as LMPOP would take it; one key at a time, since
-- Lua cannot pass more than ~8,000 arguments to one call (unpack).
for i = 2, n + 1 do
  local popped = redis.pcall('LPOP', KEYS[i], ARGV[1])
  if type(popped) == 'table' and popped.err then return {3, KEYS[i], popped.err} end
  if popped then
    redis.call('RPUSH', KEYS[1], KEYS[i], unpack(popped))
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, KEYS[i], popped}
  end
end
local ids = {}
for i = 1, n do
  local last = redis.call('XREVRANGE', KEYS[n + 1 + i], '+', '-', 'COUNT', 1)[1]
  ids[i] = last and last[1] or '0-0'
end
return {0, ids}
""",
)

ALL = (PUSH, GROUP_PUSH, GROUP_MEMBERS, GROUP_ADD, GROUP_DISCARD, GROUP_FLUSH, RETURN, POP_NORMAL)
