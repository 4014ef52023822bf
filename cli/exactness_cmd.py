"""`mlxspec exactness`: each method's sampled output against the target's exact distribution over
the whole vocabulary (mlx_spec/bench/exactness.py says how), sized to catch a given shift."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import check_output_file, err_console, fail, parse_numbers, user_errors

DEFAULT_METHODS = "ar,pld,lookahead,draft,adaedl,redrafter,auto"


def register(app: typer.Typer) -> None:
    @app.command("exactness")
    @user_errors
    def exactness(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="mlx-lm folder (default: embedded)."),
        methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma list; NAME[key=value,...] sets options. Methods the model cannot run are skipped unless named alone."),
        temps: str = typer.Option("0.7,1.0", "--temps", help="Comma list of temperatures (> 0)."),
        shift: float = typer.Option(0.01, "--shift", help="Probability shift on the first token that the trials must catch with 95% power."),
        trials: Optional[int] = typer.Option(None, "--trials", help="Steps per method and temperature (default: sized by --shift)."),
        depth: int = typer.Option(2, "--depth", help="Positions of a step to test."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="The fixed context (raw text; default: a story line that repeats itself)."),
        plant: float = typer.Option(0.0, "--plant", help="Move this much probability from the top first token to the second on purpose: the test must catch it."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the reports as JSON."),
    ):
        """Test that sampled output is exactly the target's: many single steps of each method from
        one context, against mlx-lm's own distributions. Exits 1 if a method is not exact (with
        --plant: if a planted shift goes uncaught)."""
        import importlib.util

        from rich.console import Console
        from rich.progress import Progress
        from rich.table import Table

        import mlx_spec
        from mlx_spec import methods as registry
        from mlx_spec.bench import MethodSpec, split_method_list
        from mlx_spec.errors import MlxSpecError

        if importlib.util.find_spec("scipy") is None:
            fail("mlxspec exactness needs scipy (its statistics): pip install scipy")
        from mlx_spec.bench import exactness as ex

        temperatures = parse_numbers("--temps", temps)
        if any(not 0 < t < math.inf for t in temperatures):  # (NaN too)
            fail("--temps: exactness is tested when sampling; give finite temperatures > 0")
        if not 0 < shift < 1 or plant < 0 or (trials is not None and trials < 1):
            fail("--shift must be in (0, 1), --plant >= 0 and --trials >= 1")
        check_output_file("--json", json_out)
        specs = [MethodSpec.parse(n) for n in split_method_list(methods)]
        if not specs:
            fail("--methods: name at least one method")
        for spec in specs:
            registry.check_name(spec.name)
            if spec.name in registry.DECODERS:  # dsi, mlx-lm: decoders of their own
                fail(f"{spec.name} brings its own decoder: its steps cannot be run one at a time "
                     "here (dsi's chi-square tests are in tests/dsi)")
        spec_model = mlx_spec.load(model)
        context = spec_model.tokenizer.encode(prompt or ex.DEFAULT_CONTEXT)
        runnable = {}
        for spec in specs:
            try:
                runnable[spec.label] = mlx_spec.make_decoder(spec_model, spec.name, backoff=False,
                                                             **spec.options)
            except MlxSpecError as exc:
                if len(specs) == 1:
                    raise
                err_console.print(f"[dim]skipped {escape(f'{spec.label}: {exc}')}[/]")
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("exactness", total=None)

            def progress(name, temperature, done, total):
                bar.update(task, completed=done, total=total, description=f"{name} T={temperature}")
            reports = ex.run(spec_model, runnable.__getitem__, list(runnable), temperatures,
                             context, shift, trials, depth, plant, progress)
        table = Table(title=f"exactness over the full vocabulary ({len(context)}-token context)")
        for column in ("method", "temp", "trials", "drafted/step", "accepted/step",
                       "position 1 p: tails / chi2", "catches shift", "position 2 p (groups)",
                       "verdict"):
            table.add_column(column)
        for r, label in zip(reports, list(runnable) * len(temperatures)):
            first, second = r.positions[0], r.positions[1] if len(r.positions) > 1 else None
            verdict = ("caught" if not r.exact else "MISSED") if plant else \
                ("exact" if r.exact else "NOT EXACT")
            table.add_row(label, f"{r.temperature:g}", str(r.trials), f"{r.drafted_per_step:.2f}",
                          f"{r.accepted_per_step:.2f}",
                          f"{first.p_tail:.2g} / {first.p_chi_square:.2g}",
                          f"{first.resolution:.4f}",
                          f"{min(second.p_tail, second.p_chi_square):.2g} ({second.groups})"
                          if second else "-", verdict)
        Console(width=None if Console().is_terminal else 140).print(table)
        if json_out:
            json_out.write_text(json.dumps({"model": spec_model.path, "context": context,
                                            "alpha": ex.ALPHA, "shift": shift,
                                            "reports": [r.as_dict() for r in reports]}, indent=2))
        failed = [r for r in reports if (r.exact if plant else not r.exact)]
        if failed:
            raise typer.Exit(1)
