"""Relaying over the ring without processes: which way packets go, what rank 0 re-sends when a
relay dies, and that a worker drops a job that was overtaken by its re-sent copy."""
import threading
import time

import numpy as np
import mlx.core as mx

from mlx_spec.dsi import transport, worker
from mlx_spec.dsi.orchestrator import Job, Result
from mlx_spec.dsi.ring import (JOB, RESULT, SHUTDOWN, RingNode, carries_traffic, closing_order,
                                ring_hops)
from mlx_spec.sampling import SamplingParams

GREEDY = SamplingParams()


class FakeGroup:
    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


class FakeNode(RingNode):
    """RingNode's routing without sockets: sends are recorded."""

    def __init__(self, group, deliver, link_lost):
        self.rank, self.size = group.rank(), group.size()
        self.left, self.right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        self.neighbours = sorted({self.left, self.right} - {self.rank})
        self.deliver, self.link_lost, self.lost = deliver, link_lost, set()
        self.sent, self._outboxes, self._listeners = [], {}, {}

    def send(self, dest, kind, payload, via):
        self.sent.append((dest, kind, np.asarray(payload, dtype=np.int32), via))


def test_ways_round_the_ring():
    assert ring_hops(0, 2, 4, 1) == [1, 2] and ring_hops(0, 2, 4, -1) == [3, 2]
    node = FakeNode(FakeGroup(0, 5), None, None)
    assert node.toward(1) == (1, []) and node.toward(4) == (4, [])
    assert node.toward(2) == (1, [1]) and node.toward(3) == (4, [4])
    assert node.toward(2, avoid={1}) == (4, [4, 3])
    assert node.toward(2, avoid={1, 3}) is None
    # in a ring of 3 the two workers never talk to each other; in larger rings relays do
    assert not carries_traffic(1, 2, 3) and carries_traffic(1, 0, 3) and carries_traffic(0, 2, 3)
    assert carries_traffic(1, 2, 4)
    # farthest first, and of two equally far the higher rank first
    assert sorted(range(1, 5), key=lambda w: closing_order(w, 5), reverse=True) == [3, 2, 4, 1]


def test_job_round_trip_with_draft_probabilities():
    probs = mx.random.uniform(shape=(3, 7))
    job = Job(5, 0, [1, 2, 3], [4, 5, 6], probs, seed=99)
    params = SamplingParams(temperature=0.5, top_p=0.75, top_k=3, min_p=0.125)  # exact in fp32
    decoded = transport.decode_job(transport.encode_job(job, 1, [2, 3, 4, 5, 6], params, epoch=2))
    assert decoded["job_id"] == 5 and decoded["keep"] == 1 and decoded["tail"] == [2, 3, 4, 5, 6]
    assert decoded["n_chain"] == 3 and decoded["seed"] == 99 and decoded["epoch"] == 2
    assert decoded["sampling"] == params
    assert np.array_equal(np.array(decoded["probs"]), np.array(probs))


def test_jobs_stranded_in_a_dead_relay_are_resent_the_other_way(monkeypatch):
    monkeypatch.setattr(transport, "RingNode", FakeNode)
    pool = transport.RingPool(FakeGroup(0, 4))       # workers 1, 2, 3; 2 is reached through 1
    first = Job(1, 0, [7, 8, 9], [10, 11], None, seed=0)
    pool.submit(2, first, GREEDY)
    pool.submit(3, Job(2, 0, [7, 8, 9], [10, 12], None, seed=0), GREEDY)
    dest, kind, payload, via = pool.node.sent[0]
    assert (dest, kind, via) == (2, JOB, 1)
    assert transport.decode_job(payload)["keep"] == 0
    pool._deliver(3, RESULT, np.array([2, 1, 12, 13]), via=3)  # worker 3 answered
    assert pool.wait(0) == Result(3, 2, [12, 13], 1)
    # a second job to worker 2 only sends the new tokens
    second = Job(3, 0, [7, 8, 9, 10, 11], [13], None, seed=0)
    pool._deliver(2, RESULT, np.array([1, 1, 11, 13]), via=1)
    pool.submit(2, second, GREEDY)
    assert transport.decode_job(pool.node.sent[-1][2])["keep"] == 5
    pool.node.sent.clear()
    pool.abandon(1)  # the relay died with worker 2's job maybe inside it
    (dest, kind, payload, via), = pool.node.sent
    resent = transport.decode_job(payload)
    assert (dest, kind, via) == (2, JOB, 3)
    assert resent["job_id"] == 3 and resent["keep"] == 0 and resent["epoch"] == 1
    assert resent["tail"] == [7, 8, 9, 10, 11, 13]
    pool.node.sent.clear()
    pool.abandon(3)  # now nothing leads to worker 2
    assert pool.wait(0).worker == 2 and not pool.node.sent


def test_close_returns_once_the_listeners_have_taken_the_goodbyes(monkeypatch):
    """A process that exits while a listener is inside MLX aborts in C++ teardown: close waits
    for the live neighbours' listeners (the goodbye follows the last acknowledgement) and not
    for one blocked on an abandoned (hung) worker."""
    monkeypatch.setattr(transport, "RingNode", FakeNode)
    pool = transport.RingPool(FakeGroup(0, 3))       # workers 1 and 2, both rank 0's neighbours
    hung = threading.Event()
    listeners = {1: threading.Thread(target=time.sleep, args=(0.3,), daemon=True),  # goodbye
                 2: threading.Thread(target=hung.wait, daemon=True)}
    pool.node._listeners = listeners
    for thread in listeners.values():
        thread.start()
    pool.acknowledged.add(1)                         # worker 1 answered the shutdown at once
    pool.abandoned.add(2)
    closing = threading.Thread(target=pool.close, kwargs=dict(timeout=60.0), daemon=True)
    closing.start()
    closing.join(20.0)
    assert not closing.is_alive()                    # the hung worker's listener is not waited for
    assert not listeners[1].is_alive()               # fails if close returns at the acknowledgement
    assert pool.node.sent[0][:2] == (1, SHUTDOWN)
    hung.set()


def test_worker_drops_a_job_overtaken_by_its_resent_copy(monkeypatch):
    monkeypatch.setattr(worker, "RingNode", FakeNode)

    class Recorder:
        def __init__(self):
            self.runs = []

        def run(self, keep, tail, n_chain, sampling, seed, probs):
            self.runs.append((keep, tail))
            return [tail[-1] + 1], 0

    def job(job_id, keep, tail, epoch):
        return transport.encode_job(Job(job_id, 0, [], tail[-1:], None, seed=0), keep, tail,
                                    GREEDY, epoch)

    recorder = Recorder()
    nodes = []
    real_init = worker.WorkerNode.__init__

    def init(self, group):
        real_init(self, group)
        nodes.append(self)
        self.jobs.put((JOB, job(1, 0, [5, 6], 0), 1))
        self.jobs.put((JOB, job(1, 0, [5, 6], 1), 3))   # re-sent by the other way
        self.jobs.put((JOB, job(1, 0, [5, 6], 0), 1))   # the original, late: dropped
        self.jobs.put((JOB, job(2, 2, [7], 1), 3))
        self.jobs.put((SHUTDOWN, np.zeros(0, np.int32), 3))

    monkeypatch.setattr(worker.WorkerNode, "__init__", init)
    worker.serve(FakeGroup(2, 4), recorder)
    assert recorder.runs == [(0, [5, 6]), (0, [5, 6]), (2, [7])]
    replies = [(kind, payload.tolist(), via) for dest, kind, payload, via in nodes[0].node.sent]
    assert replies[:3] == [(RESULT, [1, 0, 7], 1), (RESULT, [1, 0, 7], 3), (RESULT, [2, 0, 8], 3)]
    assert replies[3][0] == SHUTDOWN


def test_a_worker_stuck_behind_a_hung_relay_is_not_blamed():
    """Worker 2's packets go through worker 1 (as on a ring of 4): when 1 hangs, 2's job waits
    too. 2's late job is re-sent another way (reroute) and completes; only 1 is failed."""
    from support.dsi_fakes import FakePool, OracleDrafter, run, target_text

    class RelayedPool(FakePool):
        def __init__(self):
            super().__init__([0.001, 0.001, 0.001], hang_after={1: 0})  # 1 hangs from the start
            self.held = []

        def submit(self, worker, job, sampling):
            if worker == 2 and 1 not in self.abandoned:  # the relay is hung: the packet waits
                self.held.append(job)
            else:
                super().submit(worker, job, sampling)

        def reroute(self, worker):
            if worker != 2 or not self.held:
                return False
            for job in self.held:  # re-sent the other way round
                self.inboxes[2].put(job)
            self.held.clear()
            return True

    told = []
    pool = RelayedPool()
    # (1.5 s: a healthy fake worker's thread stalled that long on a loaded machine is blamed)
    out, orch = run(pool, OracleDrafter(wrong=lambda p: p % 6 == 1), job_timeout=1.5,
                    min_job_timeout=1.5, on_failure=lambda w, why: told.append(w))
    assert out == target_text((3, 5, 8), 60)
    assert told == [1] and orch.live == [2, 3]


def test_a_late_job_through_relays_is_rerouted_once(monkeypatch):
    monkeypatch.setattr(transport, "RingNode", FakeNode)
    pool = transport.RingPool(FakeGroup(0, 5))     # workers 1..4; 2 through 1, 3 through 4
    job = Job(1, 0, [7, 8], [9, 10], None, seed=0)
    pool.submit(2, job, GREEDY)
    assert pool.reroute(1) is False                 # a neighbour of rank 0: nothing to avoid
    assert pool.reroute(2) is True and pool.suspects == {1}
    dest, kind, payload, via = pool.node.sent[-1]
    resent = transport.decode_job(payload)
    assert (dest, via, resent["job_id"], resent["epoch"], resent["keep"]) == (2, 4, 1, 1, 0)
    # from now on worker 2 is reached the long way, avoiding the suspect
    pool.submit(2, Job(2, 0, [7, 8, 9, 10], [11], None, seed=0), GREEDY)
    assert pool.node.sent[-1][3] == 4 and pool.relays[2] == [4, 3]
