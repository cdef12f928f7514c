"""The dispatcher's indexes: which jobs have queued tasks, and which nodes have free slots.

A dispatch poll must cost what it does (tasks started, jobs that could take a slot), not the size of the account:
with 1,000 idle jobs or 5,000 busy nodes, a poll that starts one task touches one job and one node.

* `ReadyJobs` holds, per pool, the jobs with queued tasks (highest priority first).  A job enters it when a task is
  queued (`_model.TaskQueue` tells the scheduler on every append) and leaves it when a poll finds its queue empty.
* `FreeSlots` holds, per pool, its schedulable nodes by how many slots they have free, so picking a node for a
  task (``spread``: the freest; ``pack``: the fullest that fits) costs O(taskSlotsPerNode), not O(nodes).  Nodes
  report state changes (`_model.Node.listener`); the scheduler updates a node when its running tasks change.  An
  entry found stale when picked is corrected then; a pool with queued work and no free node known is re-read in
  full at most once a second, which covers a change made without telling the index (a node's scheduling state).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._model import SCHEDULABLE_NODE_STATES, Job, Node, Pool

#: Real seconds between two full re-reads of a pool's nodes when its index knows no free node but jobs wait.
RESYNC_INTERVAL = 1.0


class ReadyJobs:
    """Jobs with queued tasks, by the (lower-cased) id of the pool they run on."""

    def __init__(self) -> None:
        self._by_pool: dict[str, dict[str, Job]] = {}
        self._ordered: dict[str, list[Job]] = {}

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._by_pool.values())

    def mark(self, job: Job) -> None:
        """Note that ``job`` has queued tasks (cheap when it is already known)."""
        pool_key = (job.pool_id or "").lower()
        jobs = self._by_pool.setdefault(pool_key, {})
        key = job.id.lower()
        if jobs.get(key) is not job:
            jobs[key] = job
            self._ordered.pop(pool_key, None)

    def discard(self, pool_key: str, job: Job) -> None:
        """Forget ``job`` under ``pool_key`` (its queue is empty, or it moved to another pool)."""
        jobs = self._by_pool.get(pool_key)
        if jobs is not None and jobs.get(job.id.lower()) is job:
            del jobs[job.id.lower()]
            self._ordered.pop(pool_key, None)
            if not jobs:
                del self._by_pool[pool_key]

    def pools(self) -> list[str]:
        """The pools with jobs waiting."""
        return list(self._by_pool)

    def jobs(self, pool_key: str) -> list[Job]:
        """The jobs waiting for ``pool_key``, highest priority first (then in the order they became ready)."""
        ordered = self._ordered.get(pool_key)
        if ordered is None:
            ordered = sorted(self._by_pool.get(pool_key, {}).values(), key=lambda j: -j.priority)
            self._ordered[pool_key] = ordered
        return ordered


class FreeSlots:
    """A pool's schedulable nodes with free task slots, bucketed by how many slots are free."""

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.slots_per_node = pool.task_slots_per_node
        self._buckets: list[dict[str, Node]] = [{} for _ in range(self.slots_per_node + 1)]
        self._level: dict[str, int] = {}
        self._clock = clock
        self._resynced = float("-inf")
        self.resync()

    def _free_of(self, node: Node) -> int:
        pool = self.pool
        if (
            pool.nodes.get(node.id) is not node
            or node.state not in SCHEDULABLE_NODE_STATES
            or node.scheduling_state != "enabled"
        ):
            return 0
        return max(0, self.slots_per_node - node.running_slots)

    def update(self, node: Node) -> None:
        """Re-read one node (after its state or its running tasks changed)."""
        free = self._free_of(node)
        old = self._level.pop(node.id, 0)
        if old:
            self._buckets[old].pop(node.id, None)
        if free > 0:
            self._buckets[free][node.id] = node
            self._level[node.id] = free

    def empty(self) -> bool:
        """Whether no node is known to have a free slot."""
        return not self._level

    def resync(self) -> None:
        """Re-read every node of the pool (O(nodes))."""
        self._resynced = self._clock()
        for bucket in self._buckets:
            bucket.clear()
        self._level.clear()
        for node in self.pool.nodes.values():
            self.update(node)

    def resync_due(self) -> bool:
        """Whether a full re-read is allowed now (at most once per `RESYNC_INTERVAL`)."""
        return self._clock() - self._resynced >= RESYNC_INTERVAL

    def pick(self, slots: int, accept: Callable[[Node], bool] | None = None) -> Node | None:
        """The node a task needing ``slots`` goes to, by the pool's ``nodeFillType``; None when none fits.

        ``accept``, when given, leaves out the nodes it refuses (a job whose preparation task failed there): only
        then are a bucket's nodes walked one by one.
        """
        if slots > self.slots_per_node:
            return None
        pack = self.pool.node_fill_type == "pack"
        levels = range(slots, self.slots_per_node + 1) if pack else range(self.slots_per_node, slots - 1, -1)
        for level in levels:
            bucket = self._buckets[level]
            if accept is not None:
                for node in list(bucket.values()):
                    if self._free_of(node) != level:
                        self.update(node)  # stale: move it where it belongs
                    elif accept(node):
                        return node
                continue
            while bucket:
                node = next(iter(bucket.values()))
                if self._free_of(node) == level:
                    return node
                self.update(node)  # stale: move it where it belongs and look again
        return None
