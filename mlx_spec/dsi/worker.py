"""A DSI worker process: owns one copy of the target and its KV cache, verifies the jobs rank 0
sends it, replies with the tokens the target chose.

    python -m mlx_spec.dsi.worker --model PATH      (with MLX_HOSTFILE and MLX_RANK set)

`mlxspec generate --method dsi --workers N` starts these for you; across machines, `python -m
mlx_spec.dsi` under mlx.launch runs the same loop on every rank but 0. The loop ends on a
shutdown message or when rank 0 goes away (recv raises: the connection was lost).
"""
from __future__ import annotations

import argparse
import sys
import traceback

import mlx_spec  # noqa: F401  (loads the optimized BLAS before mlx computes anything)
import mlx.core as mx

from .transport import (ERROR, JOB, JOB_FIELDS, JOB_SIZE, REPLY_SIZE, RESULT,
                        SHUTDOWN, decode_sampling, frame, unframe)
from .verifier import Verifier

ORCHESTRATOR = 0
READY = "mlxspec-dsi-worker-ready"


def serve(group, verifier: Verifier) -> None:
    def recv(shape, dtype):
        array = mx.distributed.recv(shape, dtype, ORCHESTRATOR, group=group)
        mx.eval(array)
        return array

    def send(values) -> None:
        mx.eval(mx.distributed.send(mx.array(values, dtype=mx.int32), ORCHESTRATOR, group=group))

    def reply(fields, tokens=()) -> None:
        message, rest = frame(list(fields), list(tokens), REPLY_SIZE)
        send(message)
        if rest is not None:
            send(rest)

    while True:
        message = recv((JOB_SIZE,), mx.int32).tolist()
        kind, job_id, keep, n_tail, n_chain, vocab, seed = message[:7]
        if kind == SHUTDOWN:  # acknowledge, so rank 0 stops receiving before the socket closes
            reply([SHUTDOWN, 0, 0, 0])
            return
        if kind != JOB:
            raise RuntimeError(f"unexpected message kind {kind}")
        fields, tail = unframe(message, JOB_FIELDS, n_tail,
                               lambda length: recv((length,), mx.int32).tolist())
        probs = recv((n_chain, vocab), mx.float32) if vocab else None
        try:
            tokens, accepted = verifier.run(keep, tail, n_chain, decode_sampling(fields[7:11]),
                                            seed, probs)
        except Exception:  # report, then stop: this worker's cache can no longer be trusted
            traceback.print_exc()
            reply([ERROR, job_id, 0, 0])
            return
        reply([RESULT, job_id, len(tokens), accepted], tokens)


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
    return 0


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
