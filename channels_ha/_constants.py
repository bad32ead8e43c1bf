"""Every default and tuning constant of the channel layer, with units in the names."""

from __future__ import annotations

# Options shared with channels_redis.core.RedisChannelLayer, with the same defaults.
DEFAULT_PREFIX = "asgi"
DEFAULT_EXPIRY_S = 60
DEFAULT_GROUP_EXPIRY_S = 86_400
DEFAULT_CAPACITY = 100
DEFAULT_SERIALIZER_FORMAT = "msgpack"
# The largest duration option (group_expiry, timeouts) accepted, about 31,700 years: a
# "never" of 10**10 fits, and in milliseconds it stays within the 2**53 that Lua's numbers
# hold exactly.
MAX_OPTION_S = 1e12
# The largest expiry accepted, about 31 years. Each message carries its expiry time in 13
# digits of milliseconds (see _codec, and PUSH's purge), which end at 10**13 ms (the year
# 2286): an expiry above about 8.2e9 s overflowed them, and every message was dropped as
# malformed. This one fits until the year 2255; the field stays as it is, so that processes
# of different versions still read each other's messages.
MAX_EXPIRY_S = 1e9

# How long an operation waits for a usable master before RedisUnavailable.
DEFAULT_FAILOVER_TIMEOUT_S = 30.0
# A reply slower than this means the server is hung (SIGSTOP, partition): reconnect.
DEFAULT_REPLY_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
# Reconnect backoff: first wait, growth factor and ceiling.
RECONNECT_BACKOFF_FIRST_S = 0.025
RECONNECT_BACKOFF_FACTOR = 2.0
RECONNECT_BACKOFF_MAX_S = 0.5

# Once the sentinels announce that a failover starts, writes wait at most this long for the
# new master (and at most half of the failover timeout).
FAILOVER_HOLD_MAX_S = 10.0

# A blocked pop returns after this long without messages, which doubles as a liveness check.
BLOCKING_POP_TIMEOUT_S = 2.0
# An event loop that starts receiving the process's inbox waits at most this long for the
# other loops to hand it over (_handover) before it pops it: a healthy loop answers within
# milliseconds; one stuck in sync code never does.
INBOX_HANDOVER_TIMEOUT_S = 3.0
# A CLIENT UNBLOCK that found the reader not blocked yet (it can overtake the pop it means)
# goes again after a pause: the first, then twice the last, at most the max.
UNBLOCK_RETRY_FIRST_S = 0.005
UNBLOCK_RETRY_MAX_S = 0.2
# Messages popped from a process inbox per round trip.
INBOX_BATCH_SIZE = 512
# A normal-channel reader remembers the elements it handed over last, to tell them in a batch
# it recovers after a lost connection: this many, in at most this many bytes (the last batch
# always). A recovered batch is one of the last few pops (replication lag).
HANDED_OVER_REMEMBERED = 64
HANDED_OVER_REMEMBERED_BYTES = 1 << 20
# Such a reader recovers a lost pop's batch even with nobody waiting; while no master answers,
# its attempts are this far apart at first, then twice as far each time, up to the last.
IDLE_RECOVERY_PAUSE_FIRST_S = 0.5
IDLE_RECOVERY_PAUSE_MAX_S = 5.0
# How long a receiver remembers a sender's last sequence number (duplicates come only
# from retries, which happen within the failover timeout).
DEDUPE_MEMORY_MIN_S = 120.0

# After a master restarted empty, group_send waits this long for every process to
# re-assert its memberships (their readers reconnect within RECONNECT_BACKOFF_MAX_S).
RESTART_GRACE_S = 2.0
# A loss noticed this soon after the data began again gets the grace period counted from the
# moment it was noticed (the other processes may have reached the server no earlier); one
# noticed later (a process idle meanwhile) gets it counted from the epoch: long over.
RESTART_NOTICE_WINDOW_S = 10.0

# How often a process with group memberships checks that no master lost its data.
EPOCH_CHECK_INTERVAL_S = 1.0

# After a new server run, writes acknowledged this long before the failure are written again
# (receivers drop what they already had). A layer keeps them in at most this many bytes per
# process by default (its option replay_max_bytes; split evenly among its hosts), counting
# each request as written plus its bookkeeping (so at most 131,072 requests); past that the
# oldest go first. That holds 2 s of a process's fastest sends (about 12,000 a second, W1 in
# docs/benchmarks.md) of messages up to about 1 KB, or the last 31 sends of 1 MiB; a
# group_send's request holds one copy of the message per receiving process.
REPLAY_WINDOW_S = 2.0
REPLAY_MAX_BYTES = 32 << 20

# A session subscribes to the sentinels' announcements only once it has lived this long:
# each sync call (async_to_sync) is a session of a few milliseconds, which would open and
# close a subscription per sentinel for nothing (an announcement has no history to catch up
# on, and its writes are covered by the replay after a new server run anyway).
SENTINEL_WATCH_DELAY_S = 1.0
# How often a session that lived that long asks the sentinels which master they name, and
# moves its connections if they consistently name another one (see _recheck): sentinels
# pointed at another master without a failover (SENTINEL REMOVE and MONITOR) announce
# nothing, and the old master keeps its role. The same span as HINT_MAX_AGE_S, after which
# sync calls ask again: every event loop of a process leaves such a master within about as
# long. It costs one lookup per this span per event loop and Sentinel deployment (a short
# connection to each sentinel: a few milliseconds), and nothing more unless they name
# another master.
MASTER_RECHECK_INTERVAL_S = 10.0

# What a process learned of a deployment is a hint to the next event loop's session (see
# _hints): a sync call (async_to_sync) connects anew each time. A server named only by a hint
# (the last master the sentinels named, a Cluster node of the last slot map read) gets this
# long, in all, to connect and answer its handshake; else the hint is dropped and the
# sentinels are asked, or the slot map read, as without one. A hint is kept only when
# learned within half of it (a master connected to, a map most nodes gave, that fast):
# where that takes longer, the hint would mostly be waited for in vain.
HINT_PATIENCE_S = 0.25
# A hint older than this is not used: the next session asks the sentinels, or reads the slot
# map, and remembers anew. It bounds how long a process trusts what the deployment never
# tells it otherwise: sentinels pointed at another master without a failover (SENTINEL
# REMOVE and MONITOR: nothing is announced, and the old master keeps its server run and its
# replicas), a master a Cluster gained whose slots the process never wrote to. It costs one
# lookup per this span per process and configuration (3 sentinel connections, or one
# CLUSTER SLOTS per node: a few milliseconds), against one per call without hints.
HINT_MAX_AGE_S = 10.0
# A hinted master is believed only while the replicas in sync with it are those it had when
# the sentinels named it: a replica acknowledging no later than this long ago (INFO
# replication "lag", whole seconds; replicas acknowledge every second) counts as in sync.
REPLICA_LAG_MAX_S = 2
# Configurations whose hints a process keeps (the oldest are forgotten beyond).
HINTED_CONFIGS_MAX = 64
# Server addresses per configuration known to hold the layer's scripts.
SCRIPT_HOSTS_MAX = 256

# Group memberships of live channels are re-asserted this often (capped by group_expiry / 3).
GROUP_REFRESH_INTERVAL_S = 3_600.0
# A process-specific channel counts as live while it was received on within this window.
CHANNEL_LIVENESS_S = 300.0
# Local buffers of channels nobody receives on are swept this often.
BUFFER_SWEEP_INTERVAL_S = 10.0
# A bug that keeps failing background work (upkeep, delivery) is logged at most this often.
FAILURE_LOG_INTERVAL_S = 60.0
# Returning buffered messages to Redis at close may take at most this long.
CLOSE_RETURN_TIMEOUT_S = 2.0
# At server shutdown, closing the process's channel layers may take at most this long: a
# close() during a failover gives back through it (failover_timeout, 30 s by default).
LIFESPAN_CLOSE_TIMEOUT_S = 35.0
# ... or, for a longer failover_timeout, that plus this: the give-back after the readers'
# recovery (CLOSE_RETURN_TIMEOUT_S) and some room.
LIFESPAN_CLOSE_MARGIN_S = 5.0

# Keys scanned per SCAN call during flush().
FLUSH_SCAN_COUNT = 1_000
# Members of a group that one call of flush()'s GROUP_FLUSH discards (and records): about a
# millisecond of Redis's time per call, however large the group.
FLUSH_GROUP_BATCH = 1_000
