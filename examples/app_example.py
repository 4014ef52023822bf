"""A small app on mlx-spec's Python API.

- load the model once;
- a worker thread decodes while the "UI" (here: the console, on the main thread) shows each chunk
  as soon as its tokens are accepted;
- the user presses "stop" halfway through a generation: it is cancelled between two steps;
- several generations run in sequence on the same worker: they share one decoder per method, so
  the target's KV cache of a shared prefix and the drafter's state are reused, not rebuilt.

Run:  python examples/app_example.py [--model PATH] [--method pld] [--max-tokens 80]
"""
from __future__ import annotations

import argparse
import sys

import mlx_spec
from mlx_spec.app import Worker

STORY = "Once upon a time, there was a little girl named Lily. She loved to play in the park."
FOLLOW_UPS = [" One day, Lily saw a big red ball.", " Lily went home and told her mom.",
              " The next morning, the sun was warm."]


def show_stream(generation, ui_write, stop_after: int = 0) -> None:
    """The UI loop: print chunks as they arrive; press "stop" after `stop_after` tokens."""
    for chunk in generation:
        ui_write(chunk.text)
        if stop_after and chunk.stats.generated_tokens >= stop_after:
            generation.cancel()  # a stop button would call this from the UI thread
            break
    ui_write("\n")


def main(argv=None, ui_write=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--method", default="pld")
    parser.add_argument("--max-tokens", type=int, default=80)
    args = parser.parse_args(argv)
    ui_write = ui_write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))

    model = mlx_spec.load(args.model)  # once, for the whole app
    with Worker(model, method=args.method) as worker:
        # 1. stream one generation into the UI
        ui_write("[1] streaming\n" + STORY)
        generation = worker.submit(STORY, max_tokens=args.max_tokens, raw=True)
        show_stream(generation, ui_write)
        result = generation.wait()
        ui_write(f"    {result.stats.generated_tokens} tokens, finish: {result.finish_reason}, "
                 f"{result.stats.mean_accepted:.2f} tokens per target call\n")

        # 2. cancel a generation midway
        ui_write("[2] cancelling after a few tokens\n" + STORY)
        generation = worker.submit(STORY, max_tokens=args.max_tokens, raw=True)
        show_stream(generation, ui_write, stop_after=4)
        result = generation.wait()
        ui_write(f"    stopped at {result.stats.generated_tokens} of {args.max_tokens} tokens, "
                 f"finish: {result.finish_reason}\n")

        # 3. several generations in sequence; each shares the story's prefix with the last
        ui_write("[3] in sequence, reusing the decoder and its cache\n")
        generations = [worker.submit(STORY + more, max_tokens=args.max_tokens // 2, raw=True)
                       for more in FOLLOW_UPS]  # queued at once, run one after another
        for more, generation in zip(FOLLOW_UPS, generations):
            result = generation.wait()
            ui_write(f"    ...{more} -> {result.stats.generated_tokens} tokens, "
                     f"prefill {result.stats.prefill_s * 1000:.1f} ms, "
                     f"finish: {result.finish_reason}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
