"""`mlxspec doctor`: what this machine will run on, and whether it is fast."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import user_errors


def _gemm_gflops() -> float:
    import mlx.core as mx

    a, b = mx.random.normal((1024, 1024)), mx.random.normal((1024, 64))
    mx.eval(a @ b)
    start = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ b)
    return 10 * 2 * 1024 * 1024 * 64 / (time.perf_counter() - start) / 1e9


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    @user_errors
    def doctor(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Target whose verify cost to show (default: embedded)."),
        remeasure: bool = typer.Option(False, "--remeasure", help="Measure the verify cost again instead of reading it from the cache."),
    ):
        """Print the backend, the BLAS in use, versions, the default models and the target's
        measured verify cost (mlx_spec/cost.py)."""
        from importlib.metadata import PackageNotFoundError, version

        import mlx.core as mx

        import mlx_spec
        from mlx_spec import blas, gpu_env, methods
        from mlx_spec.loading import DEFAULT_DRAFT, DEFAULT_TARGET, shipped_model
        from mlx_spec.sampling import rows_on_host

        def ver(name):
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        if mx.metal.is_available():
            backend = "Metal (Apple GPU)"
        elif hasattr(mx, "cuda") and mx.cuda.is_available():
            backend = "CUDA (NVIDIA GPU)"
        else:
            backend = "CPU"
        table = Table(show_header=False, box=None)
        rows = [
            ("backend", backend),
            ("BLAS", blas.describe()),
            ("GPU settings", gpu_env.describe()),
            ("sampling rows", "on the host, numpy's exp (MLX computes on the CPU)"
             if rows_on_host() else "MLX's ops"),
            ("fp32 GEMM 1024x1024x64", f"{_gemm_gflops():.1f} GFLOP/s"),
            ("mlx-spec", mlx_spec.__version__),
            ("mlx", ver("mlx")),
            ("mlx-lm", ver("mlx-lm")),
            ("python", platform.python_version() + " on " + platform.platform(terse=True)),
        ]
        for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
            path = shipped_model(name)
            rows.append((f"model {name}", str(path) if path else "missing (not built yet)"))
        rows.append(("methods", ", ".join(methods.available())))
        if model is not None or shipped_model(DEFAULT_TARGET):
            from mlx_spec.cost import cost_model, describe

            spec_model = mlx_spec.load(model)
            measured = cost_model(spec_model, refresh=remeasure)
            rows.append((f"verify cost ({Path(spec_model.path).name})",
                         describe(measured) + " (relative to a 1-token step; --remeasure on a quiet machine)"))
            from mlx_spec.drafters.auto import describe_remembered

            rows.append((f"auto's rates ({Path(spec_model.path).name})",
                         describe_remembered(spec_model) + " (as auto measured them: tokens per modelled "
                         "1-token step, about the speedup over plain decoding)"))
        for key, value in rows:
            table.add_row(f"[bold]{key}[/]", value)
        Console().print(table)
