"""`mlxspec text-replay`: pld and lookahead replayed on `ar`'s own texts, priced by the cost model
(mlx_spec/bench/text_replay.py says how): their per-category speedups without timing noise."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import check_output_file, err_console, fail, parse_numbers, user_errors


def register(app: typer.Typer) -> None:
    @app.command("text-replay")
    @user_errors
    def text_replay(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="mlx-lm folder or hub id (default: embedded)."),
        methods: str = typer.Option("pld,lookahead", "--methods", help="Comma list of methods whose drafts depend on the text alone; NAME[key=value,...] sets options."),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="As `mlxspec bench --prompts` (default: built-in story prompts)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use the first K prompts."),
        max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
        temps: str = typer.Option("0,0.7,1.0", "--temps", help="Comma list of temperatures."),
        seed: int = typer.Option(0, "--seed", help="The seed of `ar`'s sampled texts (as `mlxspec bench --seed`)."),
        backoff: bool = typer.Option(True, "--backoff/--no-backoff", help="The engine's back-off, fed the priced seconds."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    ):
        """Replay pld and lookahead on `ar`'s own texts, each step priced by the cost model: their
        speedups per category, the same on every run (the drafters' own time is shown beside)."""
        from rich.console import Console
        from rich.table import Table

        import mlx_spec
        from mlx_spec import methods as registry
        from mlx_spec.bench import MethodSpec, load_prompts, split_method_list
        from mlx_spec.bench import text_replay as tr
        from mlx_spec.drafters.shared import target_cost
        from mlx_spec.sampling import SamplingParams, check_seed

        temperatures = parse_numbers("--temps", temps)
        for t in temperatures:
            SamplingParams(temperature=t)  # (finite, >= 0)
        if max_tokens < 1 or (limit is not None and limit < 1):
            fail("--max-tokens and --limit must be >= 1")
        check_seed(seed)
        check_output_file("--json", json_out)
        specs = [MethodSpec.parse(n) for n in split_method_list(methods)]
        if not specs:
            fail("--methods: name at least one method")
        for spec in specs:  # (before the model loads and ar decodes)
            registry.check_name(spec.name)
            spec.options.setdefault("backoff", backoff)  # (a method's own backoff=... wins)
            if not isinstance(spec.options["backoff"], bool):
                fail(f"{spec.label}: backoff must be true or false")
            tr.check_method(spec.name, **{k: v for k, v in spec.options.items() if k != "backoff"})
        prompt_list = load_prompts(prompts)[:limit]
        spec_model = mlx_spec.load(model)
        cost = target_cost(spec_model)

        def encode(prompt: str) -> list[int]:
            return mlx_spec.api.encode_prompt(spec_model, prompt)

        results = []
        for temperature in temperatures:
            with err_console.status(f"ar's texts at T={temperature:g}"):
                texts = tr.ar_texts(spec_model, prompt_list, encode, temperature, max_tokens,
                                    seed)
            for spec in specs:
                replayed = tr.replay(spec_model, texts, spec.name, temperature, cost,
                                     **spec.options)
                results.append({"method": spec.label, "temperature": temperature,
                                "backoff": spec.options["backoff"],
                                **tr.summary(replayed, cost, temperature > 0)})
        categories = list(dict.fromkeys(p["category"] for p in prompt_list))
        table = Table(title=f"replayed on ar's texts ({len(prompt_list)} prompts, {max_tokens} "
                            "tokens), priced by the cost model")
        for column in ("method", "temp", "speedup", "tokens/call", "drafting ms/call",
                       *categories):
            table.add_column(column)
        for r in results:
            table.add_row(escape(r["method"]), f"{r['temperature']:g}", f"{r['speedup']:.3f}x",
                          f"{r['tokens_per_call']:.2f}",
                          f"{1000 * r['drafting_s'] / max(r['target_calls'], 1):.2f}",
                          *(f"{r['by_category'][c]['speedup']:.3f}x" for c in categories))
        Console(width=None if Console().is_terminal else 160).print(table)
        if json_out:
            json_out.write_text(json.dumps({"model": spec_model.path, "max_tokens": max_tokens,
                                            "seed": seed, "prompt_set": prompts or "stories",
                                            "prompts": len(prompt_list),
                                            "cost_model": cost.to_dict(),
                                            "results": results}, indent=2))
