"""How long does one verify take on this backend, by its shape and by what ran before it?

The cost model (mlx_spec/cost.py) times each verify size once, in a tight loop. In a bench on an
H200, multi-token verifies cost 3.4-31 ms by method against the model's 2.1-4.2 ms. This script
separates the candidate causes. Each pattern below runs target verifies the way the engine does:
one sync per call, the cached length growing by one token per call.

- one-token steps;
- a chain of 9 at every step;
- a chain of 9 after 15 one-token steps (a back-off probe);
- branching trees of one size (33 nodes) at every step;
- branching trees of a new size (4-33 nodes) at every step;
- a chain of 9 at one cached length, repeated (no new shape at all).

It prints the median, first and slowest call of each pattern in milliseconds.

    python examples/verify_shapes.py [--model FOLDER] [--steps 30]
"""
import argparse
import random
import statistics
import time

import mlx.core as mx

import mlx_spec
from mlx_spec.target import Target
from mlx_spec.tree import Tree


def random_tree(rng: random.Random, size: int) -> Tree:
    """A branching tree of exactly `size` nodes (root included): branches of random depth."""
    branches, nodes = [], 1
    while nodes < size:
        depth = min(rng.randint(1, 6), size - nodes)
        branches.append([rng.randint(10, 200) for _ in range(depth)])
        nodes += depth  # distinct random tokens: branches rarely share a prefix
    return Tree.from_branches(7, branches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    model = mlx_spec.load(args.model)
    target = Target(model.model)
    target.prefill([5 + i % 50 for i in range(64)])
    rng = random.Random(0)

    def call(tree: Tree, keep: bool = True) -> float:
        start = time.perf_counter()
        out = target.verify(tree)
        mx.eval(out.logits)
        ms = (time.perf_counter() - start) * 1000
        if keep:
            target.commit([0], len(tree))  # the root stays: one more cached token per call
        else:
            target.trim(len(tree))
        return ms

    def chain(n: int) -> Tree:
        return Tree.from_chain(7, [8] * (n - 1))

    def probe() -> float:
        for _ in range(15):
            call(chain(1))
        return call(chain(9))

    for tree in (chain(1), chain(9), random_tree(rng, 33)):  # first-use work out of the way
        call(tree)
    patterns = {
        "one-token steps": [call(chain(1)) for _ in range(args.steps)],
        "chain of 9 every step": [call(chain(9)) for _ in range(args.steps)],
        "chain of 9 after 15 one-token steps": [probe() for _ in range(args.steps // 3)],
        "33-node tree every step": [call(random_tree(rng, 33)) for _ in range(args.steps)],
        "tree of a new size every step": [call(random_tree(rng, rng.randint(4, 33)))
                                          for _ in range(args.steps)],
        "chain of 9 at one cached length": [call(chain(9), keep=False) for _ in range(args.steps)],
    }
    print(f"{mx.default_device()}, cached length {64}..{target.offset}")
    for name, ms in patterns.items():
        print(f"{name:38s} median {statistics.median(ms):7.2f} ms   first {ms[0]:7.2f}   "
              f"max {max(ms):7.2f}   ({len(ms)} calls)")


if __name__ == "__main__":
    main()
