"""Every number the sandbox waits on or configures, in one place, with units in the names."""

from __future__ import annotations

HOST = "127.0.0.1"
MASTER_NAME = "mymaster"

# How long one redis-server process may take to answer PING after it is spawned.
NODE_START_TIMEOUT_S = 10.0
# How long a whole topology may take to converge (replicas linked, sentinels agree, slots ok).
TOPOLOGY_READY_TIMEOUT_S = 30.0
# How long a failover may take by default: down-after + election + promotion, with margin.
FAILOVER_TIMEOUT_S = 30.0
# Starts of a topology, each on fresh ports, when another process took a port before its node.
PORT_TAKEN_TRIES = 3
# Grace period between SIGTERM and SIGKILL when stopping a node.
NODE_STOP_TIMEOUT_S = 3.0

# Interval between two polls of a condition when no event arrives earlier.
POLL_INTERVAL_S = 0.05
# Socket timeouts of the clients that observe nodes: a paused node must not stall a wait.
OBSERVE_SOCKET_TIMEOUT_S = 0.5

# Sentinel settings: quick detection, and a failover timeout small enough to fail over again.
SENTINEL_QUORUM = 2
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000

# Cluster settings: node timeout drives failure detection and replica promotion.
CLUSTER_NODE_TIMEOUT_MS = 1000
CLUSTER_SLOTS = 16384
# Keys moved per MIGRATE command, and the bound on MIGRATE rounds for one slot.
MIGRATE_BATCH_KEYS = 100
MIGRATE_MAX_ROUNDS = 10_000
MIGRATE_TIMEOUT_MS = 5000

# Lines of a node's log quoted in errors.
LOG_TAIL_LINES = 20
