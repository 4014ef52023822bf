"""A DSI worker process: owns one copy of the target and its KV cache, verifies the jobs rank 0
sends it, replies with the tokens the target chose, and relays packets for workers beyond it on
the ring (ring.py).

    python -m mlx_spec.dsi.worker --model PATH      (with MLX_HOSTFILE and MLX_RANK set)

`mlxspec generate --method dsi --workers N` starts these for you; across machines, `python -m
mlx_spec.dsi` under mlx.launch runs the same loop on every rank but 0. The loop ends on a
shutdown message, or when rank 0 can no longer be reached (its link, or both links, lost).
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import traceback

import mlx_spec  # noqa: F401  (loads the optimized BLAS before mlx computes anything)
import mlx.core as mx

from .ring import ERROR, JOB, PEER_LOST, RESULT, SHUTDOWN, RingNode
from .transport import decode_job
from .verifier import Verifier

ORCHESTRATOR = 0
READY = "mlxspec-dsi-worker-ready"
_GONE = object()  # rank 0 is unreachable


class WorkerNode:
    """Jobs addressed to this rank queue up for the main thread; a lost neighbour is reported
    to rank 0 the other way round the ring."""

    def __init__(self, group):
        self.jobs: queue.Queue = queue.Queue()
        self.node = RingNode(group, self._deliver, self._link_lost)

    def _deliver(self, src, kind, payload, via) -> None:
        self.jobs.put((kind, payload, via))

    def _link_lost(self, neighbour: int, reason: str) -> None:
        others = [n for n in self.node.neighbours if n not in self.node.lost]
        if neighbour == ORCHESTRATOR or not others:
            self.jobs.put((_GONE, None, None))
            return
        self.node.send(ORCHESTRATOR, PEER_LOST, [neighbour], others[0])

    def reply(self, kind: int, payload, via: int) -> None:
        """Back the way the job came: every rank on that way was alive a moment ago."""
        self.node.send(ORCHESTRATOR, kind, payload, via)


def serve(group, verifier: Verifier) -> None:
    worker = WorkerNode(group)
    epoch = 0
    while True:
        kind, payload, via = worker.jobs.get()
        if kind is _GONE:
            raise RuntimeError("rank 0 is unreachable")
        if kind == SHUTDOWN:  # acknowledge, so rank 0 knows before this rank's sockets close
            worker.reply(SHUTDOWN, [], via)
            worker.node.goodbye()
            worker.node.flush(timeout=5.0)  # the process exits right after
            return
        if kind != JOB:
            raise RuntimeError(f"unexpected message kind {kind}")
        job = decode_job(payload)
        if job["epoch"] < epoch:
            continue  # re-sent since by another way, with the whole context: this one is stale
        epoch = job["epoch"]
        try:
            tokens, accepted = verifier.run(job["keep"], job["tail"], job["n_chain"],
                                            job["sampling"], job["seed"], job["probs"])
        except Exception:  # report, then stop: this worker's cache can no longer be trusted
            traceback.print_exc()
            worker.reply(ERROR, [job["job_id"]], via)
            worker.node.flush(timeout=5.0)
            return
        worker.reply(RESULT, [job["job_id"], accepted, *tokens], via)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="DSI target worker (rank >= 1)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--kv-bits", type=int, default=None)
    args = parser.parse_args(argv)
    # imports are done: tell the spawning process to connect now (the ring backend only retries a
    # connection for a short while, and imports on a busy machine can take longer than that)
    print(READY, flush=True)
    group = mx.distributed.init(backend="ring", strict=True)
    run_worker(group, args.model, args.kv_bits)
    exit_now(0)


def exit_now(code: int) -> None:
    """Skip interpreter teardown: ring listener threads may still be blocked inside MLX, and C++
    static destructors running under them abort the process ("terminate called ...")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker(group, model_path: str, kv_bits=None) -> None:
    from ..loading import load
    from ..target import Target

    if group.rank() == ORCHESTRATOR:
        raise SystemExit("rank 0 is the orchestrator, not a worker")
    model = load(model_path)
    try:
        serve(group, Verifier(Target(model.model, kv_bits=kv_bits)))
    except RuntimeError as exc:  # the orchestrator is gone
        print(f"dsi worker {group.rank()}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
