"""`mlxspec kernels`: how long building tree masks takes, per backend, next to a whole verification
step of the target, and the share of the step the mask takes on the backend the engine would use."""
from __future__ import annotations

import json
import statistics
import time
from typing import Optional

import typer

from .common import fail, user_errors


def _median_ms(run, repeats: int) -> float:
    run()  # warm-up: compile / cache the kernel
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_tree(n: int, seed: int = 0):
    """A draft-like tree of n nodes: each node hangs off one of the three nodes before it."""
    import random

    from mlx_spec.tree import Tree

    rng = random.Random(seed)
    parents = [-1] + [rng.randrange(max(0, i - 3), i) for i in range(1, n)]
    return Tree(tokens=[rng.randrange(1, 100) for _ in parents], parents=parents)


def bench_beams(width: int, length: int, vocab: int, seed: int = 0):
    """ReDrafter-like beams [1, W, L]: a shared root, then tokens from a small vocabulary, so
    beams share prefixes as real beam searches do."""
    import mlx.core as mx
    import numpy as np

    beams = np.random.default_rng(seed).integers(1, vocab, size=(1, width, length))
    beams[:, :, 0] = 1
    return mx.array(beams.astype(np.int32))


def measure(spec_model, nodes: list[int], beam_shapes: list[tuple[int, int]], prefix: int,
            repeats: int) -> list[dict]:
    import mlx.core as mx

    from mlx_spec import kernels
    from mlx_spec.target import Target

    target = Target(spec_model.model)
    vocab = int(spec_model.config.get("vocab_size") or 256)
    target.prefill([1 + (7 * i) % (vocab - 1) for i in range(prefix)])
    engine_backend = kernels.active_backend()
    backends = kernels.available_backends()

    def step_ms(tree) -> float:
        def verify():
            out = target.verify(tree)
            mx.eval(out.logits)
            target.trim(len(tree))
        return _median_ms(verify, repeats)

    rows = []

    def add_rows(shape: str, size: int, step: float, timings: dict[str, float]) -> None:
        for backend, ms in timings.items():
            rows.append({"shape": shape, "nodes": size, "prefix": prefix, "backend": backend,
                         "mask_ms": round(ms, 4), "step_ms": round(step, 3),
                         "share_of_step": round(ms / step, 4), "engine_uses": backend == engine_backend})

    for n in nodes:
        tree = bench_tree(n)
        timings = {b: _median_ms(lambda b=b: mx.eval(kernels.tree_mask_and_positions(
            tree.parents, tree.depths, prefix, backend=b)), repeats) for b in backends}
        add_rows("tree", n, step_ms(tree), timings)
    for width, length in beam_shapes:
        beams = bench_beams(width, length, vocab=4)

        def pack_and_mask(b):
            packing = kernels.pack_beams(beams, backend=b)
            mx.eval(kernels.beam_mask_and_positions(packing, prefix, backend=b))

        timings = {b: _median_ms(lambda b=b: pack_and_mask(b), repeats) for b in backends}
        tree = kernels.pack_beams(beams, backend="reference").tree()
        add_rows(f"beams {width}x{length}", len(tree), step_ms(tree), timings)
    return rows


def _print_table(rows: list[dict], model_path: str, prefix: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tree masks vs one verification step\n{model_path}, {prefix} cached tokens")
    for column in ("shape", "nodes", "backend", "engine", "mask ms", "step ms", "share"):
        table.add_column(column, no_wrap=True,
                         justify="left" if column in ("shape", "backend", "engine") else "right")
    for row in rows:
        table.add_row(row["shape"], str(row["nodes"]), row["backend"], "yes" if row["engine_uses"] else "",
                      f"{row['mask_ms']:.3f}", f"{row['step_ms']:.2f}", f"{100 * row['share_of_step']:.1f}%")
    Console().print(table)
    Console(stderr=True).print("[dim]share = mask ms / step ms. cpu = the kernel bodies compiled for "
                               "the host (the test harness: a ctypes call plus copies); reference = "
                               "MLX ops; metal / cuda appear where mlx has that GPU. A beams row "
                               "times packing plus mask and verifies the packed tree.[/]")


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"--nodes wants comma-separated integers, got {text!r}")
    if any(size < 1 for size in sizes):
        fail("--nodes must be positive")
    return sizes


def _parse_beams(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            width, length = (int(v) for v in part.lower().split("x"))
        except ValueError:
            fail(f"--beams wants WIDTHxLENGTH pairs such as 4x5, got {part!r}")
        if width < 1 or length < 1:
            fail("--beams sizes must be positive")
        shapes.append((width, length))
    return shapes


def register(app: typer.Typer) -> None:
    @app.command("kernels")
    @user_errors
    def kernels_command(
        model: Optional[str] = typer.Option(None, "--model", "-m",
                                            help="Target model (default: the shipped target)."),
        nodes: str = typer.Option("8,32,64", help="Tree sizes to time, comma-separated."),
        beams: str = typer.Option("4x5,16x8", help="Beam shapes WIDTHxLENGTH to pack and mask ('' for none)."),
        prefix: int = typer.Option(256, help="Tokens already in the KV cache."),
        repeats: int = typer.Option(20, help="Timed repetitions per measurement (median)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    ):
        """Time mask construction per backend against a whole target verification step."""
        import mlx_spec
        from mlx_spec.errors import MlxSpecError

        if prefix < 0 or repeats < 1:
            fail("--prefix must be >= 0 and --repeats >= 1")
        sizes, shapes = _parse_sizes(nodes), _parse_beams(beams)
        try:
            spec_model = mlx_spec.load(model)
        except MlxSpecError as exc:
            if model is None:
                fail(f"{exc} (the default model is not built yet: pass --model PATH)")
            raise
        context = spec_model.context_length
        largest = max(sizes + [w * l for w, l in shapes] + [0])
        if context and prefix + largest > context:
            fail(f"--prefix {prefix} plus {largest} tree nodes exceeds the model's context of {context}")
        rows = measure(spec_model, sizes, shapes, prefix, repeats)
        if as_json:
            print(json.dumps({"model": spec_model.path, "rows": rows}, indent=1))
        else:
            _print_table(rows, spec_model.path, prefix)
