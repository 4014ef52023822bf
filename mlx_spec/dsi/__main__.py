"""DSI across machines: every rank runs this under mlx.launch; rank 0 orchestrates (drafts,
schedules, prints the text), every other rank is a target worker.

    mlx.launch --backend ring --hostfile hosts.json -- \\
        python -m mlx_spec.dsi --model PATH --prompt "Once upon a time" --max-tokens 200

The model path (or hub id) must resolve on every machine. Any number of ranks works with the ring
backend: rank 0 talks to its two ring neighbours and the workers relay packets for the others.
"""
from __future__ import annotations

import argparse
import sys

import mlx_spec  # noqa: F401  (optimized BLAS before mlx computes)
import mlx.core as mx


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="distributed speculative inference (mlx.launch)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default="Once upon a time, there was a little girl")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--drafter", default="draft")
    parser.add_argument("--draft-model", default=None)
    parser.add_argument("--block", "--lookahead", dest="block", type=int, default=4,
                        help="drafts per job (--lookahead: its earlier name)")
    parser.add_argument("--temp", type=float, default=0.0)
    parser.add_argument("--kv-bits", type=int, default=None)
    args = parser.parse_args(argv)
    group = mx.distributed.init(strict=True)
    from .worker import exit_now, run_worker

    if group.rank() != 0:
        run_worker(group, args.model, args.kv_bits)
        exit_now(0)
    model = mlx_spec.load(args.model)
    chunks = mlx_spec.stream_generate(model, args.prompt, method="dsi", max_tokens=args.max_tokens,
                                      temperature=args.temp, drafter=args.drafter,
                                      draft_model=args.draft_model, block=args.block,
                                      workers=group.size() - 1)
    stats = None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        stats = chunk.stats
    if stats is not None:
        print(f"\n{stats.generated_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
              f"{stats.target_calls} target jobs, method dsi", file=sys.stderr)
    from .launch import close_pool

    close_pool()  # the workers stop (farthest first) before this rank's sockets close
    exit_now(0)


if __name__ == "__main__":
    sys.exit(main())
