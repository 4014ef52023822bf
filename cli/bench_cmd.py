"""`mlxspec bench`: methods side by side on the same prompts, as a table, JSON and a plot."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import (MinPOption, TopKOption, TopPOption, check_output_file, err_console,
                     parse_method_options, user_errors)

DEFAULT_METHODS = ["ar", "pld", "lookahead", "draft", "adaedl", "redrafter", "auto"]


def _stream_one(model, spec, prompt, max_tokens, temperature, seed, ignore_eos=False,
                dispatch_ahead=True, filters=None):
    """One method's decoding steps on one prompt: (new token ids, stats so far) per step.
    dispatch_ahead=False (step interleaving): nothing of the method runs while another's step
    is timed (engine.Decoder.dispatch_ahead). filters: top_p, top_k, min_p when sampling."""
    import mlx_spec

    decoder = mlx_spec.make_decoder(model, spec.name, **spec.options)
    if hasattr(decoder, "dispatch_ahead"):
        decoder.dispatch_ahead = dispatch_ahead
    for chunk in mlx_spec.stream_generate(model, prompt, max_tokens=max_tokens,
                                          temperature=temperature, seed=seed, decoder=decoder,
                                          ignore_eos=ignore_eos, **(filters or {})):
        yield chunk.token_ids, chunk.stats


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "[bold red]NO[/]"
    return f"{value:.{digits}f}"


def memory_line(memory: dict) -> str:
    def mb(key):
        return "?" if memory[key] is None else f"{memory[key]:.0f}"
    return (f"memory: RSS {mb('rss_start_mb')} MB at start, {mb('rss_after_warmup_mb')} after warm-up, "
            f"{mb('rss_end_mb')} at end, peak {mb('peak_rss_mb')}; MLX active "
            f"{mb('mlx_active_mb')} MB, cache {mb('mlx_cache_mb')} MB")


def cache_line(cache: dict) -> str:
    rollback = cache["verify_after_rollback_ms"] - cache["verify_ms"]
    return (f"cache: {', '.join(cache['cache_kinds'])}; trees {'yes' if cache['trees'] else 'no'}; "
            f"rejecting {cache['drafted'] - cache['accepted']} of {cache['drafted']} drafts costs "
            f"{rollback:+.2f} ms in the next verify ({cache['replayed_rows']} rows fed again; "
            f"a forward of the {cache['accepted'] + 1} kept tokens: {cache['replay_forward_ms']:.2f} ms)")


def anchored_line(methods: dict) -> str:
    """Each method's verify ms per call without stalls beside the model's prediction anchored to
    `ar`'s calls (bench.add_verify_prediction), or "" where there is none."""
    from mlx_spec.bench import REFERENCE
    measured = {name: (m["verify_ms_per_call_unstalled"],
                       m["predicted_verify_ms_per_call_anchored"])
                for name, m in methods.items()
                if m.get("predicted_verify_ms_per_call_anchored") and name != REFERENCE}
    pairs = ", ".join(f"{name} {ms:.1f} / {model:.1f} ({ms / model - 1:+.0%})"
                      for name, (ms, model) in measured.items())
    return (f"the model's shape (verify ms per call without stalls / model ms scaled by `ar`'s "
            f"measured over predicted): {pairs}" if pairs else "")


def stall_line(methods: dict, priced: bool = True) -> str:
    """The machine's stalls per method and the speedups without them, or "" where none; `priced`:
    told by the cost model's price of each step (bench.stalls), else by the median rule."""
    from mlx_spec.bench import STALL, STALL_STEPS
    if not any(m.get("stall_steps") for m in methods.values()):
        return ""
    stalled = ", ".join(f"{name} {m['stall_steps']} (+{m['stall_s']:.1f} s, "
                        f"{m['stall_s'] / m['decode_s']:.1%} of its time)"
                        for name, m in methods.items() if m.get("stall_steps") and m["decode_s"])
    unstalled = ", ".join(f"{name} {m['speedup_unstalled']:.2f}x" for name, m in methods.items()
                          if m.get("speedup_unstalled") is not None)
    verify = ", ".join(f"{name} {m['verify_ms_per_call_unstalled']:.1f} / "
                       f"{m['predicted_verify_ms_per_call']:.1f}" for name, m in methods.items()
                       if m.get("predicted_verify_ms_per_call")
                       and m.get("verify_ms_per_call_unstalled") is not None)
    rule = (f"steps over their due by more than {STALL_STEPS:g}x a one-token step"
            if priced else f"steps over {STALL:g}x their prompt's median step")
    return (f"stalls ({rule}: the machine's, by chance on any method): {stalled}; speedups "
            f"without them: {unstalled}"
            + (f"; verify ms per call without them / model ms: {verify}" if verify else ""))


def render_table(title: str, methods: dict) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("method", "tok/s", "speedup", "acc/call", "calls", "= ar", "draft%", "verify%",
                   "other%", "verify ms", "model ms"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, m in methods.items():
        total = sum(m["time_split_s"].values()) or 1.0
        split = [f"{100 * m['time_split_s'][k] / total:.0f}" for k in ("draft", "verify", "other")]
        speedup = _fmt(m["speedup"]) + ("x" if m["speedup"] else "")
        if m.get("speedup_by_round"):
            speedup += f" ({min(m['speedup_by_round']):.2f}-{max(m['speedup_by_round']):.2f})"
        table.add_row(escape(name), _fmt(m["tokens_per_s"], 1), speedup,
                      _fmt(m["mean_accepted"]), str(m["target_calls"]), _fmt(m["matches_ar"]), *split,
                      _fmt(m.get("verify_ms_per_call"), 1), _fmt(m.get("predicted_verify_ms_per_call"), 1))
    return table


def write_plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from mlx_spec.errors import MlxSpecError
        raise MlxSpecError("--plot needs matplotlib: pip install 'mlx-spec[plot]'") from None
    methods = report["methods"]
    names = list(methods)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(names, [methods[n]["speedup"] or 0 for n in names], color="#4c72b0")
    left.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    left.set_ylabel("speedup over ar")
    left.set_title("decode speed")
    left.tick_params(axis="x", rotation=30)
    drafting = [n for n in names if n != "ar"] or names  # ar is always 1 token per call
    width = 0.8 / max(1, len(drafting))
    lengths = set()
    for i, name in enumerate(drafting):
        hist = methods[name]["accepted_length_histogram"]
        lengths.update(int(k) for k in hist)
        xs = [int(k) + (i - (len(drafting) - 1) / 2) * width for k in hist]
        right.bar(xs, list(hist.values()), width=width, label=name)
    right.set_xticks(sorted(lengths))
    right.set_xlabel("tokens per target call")
    right.set_ylabel("target calls")
    right.set_title("accepted lengths")
    right.legend(fontsize=8)
    fig.suptitle(f"mlxspec bench: {Path(report['model']).name}, "
                 f"{sampling_words(report['settings'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sampling_words(settings: dict) -> str:
    """"temp T" and the filters set (top-p, top-k, min-p), for the progress line and the plot's
    title; a report written before the filters were recorded has none."""
    words = [f"temp {settings['temperature']}"]
    if settings.get("top_p", 1.0) < 1.0:
        words.append(f"top-p {settings['top_p']}")
    if settings.get("top_k", 0) > 0:
        words.append(f"top-k {settings['top_k']}")
    if settings.get("min_p", 0.0) > 0:
        words.append(f"min-p {settings['min_p']}")
    return ", ".join(words)


def control_line(control: dict) -> str:
    """The footer's account of the control (bench.control_band): how far plain decoding run twice
    in one run lands from itself, the margin every other speedup is read against."""
    if control["speedup"] is None:
        return f"control ({control['label']}): no speedup (`ar` emitted no tokens)"
    line = f"control (`ar` run twice, the second as {control['label']}): {control['speedup']:.3f}x"
    if control.get("speedup_unstalled") is not None:
        line += f" ({control['speedup_unstalled']:.3f}x without stalls)"
    if control.get("speedup_by_round"):
        line += ", rounds " + " / ".join(f"{x:.3f}" for x in control["speedup_by_round"])
    if len(control["by_category"]) > 1 and control["band"]:
        low, high = control["band"]
        line += f"; per category {low:.3f}-{high:.3f}x"
        if control.get("band_unstalled"):
            low, high = control["band_unstalled"]
            line += f" ({low:.3f}-{high:.3f}x without stalls)"
    return line + ": speedups this far from 1.00x are the run's noise, not a method's"


def intervals_line(intervals: dict, sampled: bool) -> str:
    """The footer's account of bench.speedup_intervals: each method's speedup, and its share of
    the fastest method's speed, as far as these prompts and rounds pin them down."""
    fastest = intervals["fastest"]
    parts = []
    for label, found in intervals["by_method"].items():
        if label == "ar" or found["speedup"] is None:
            continue
        low, high = found["speedup"]
        part = f"{label} {low:.2f}-{high:.2f}x"
        if fastest is not None and label != fastest and found["of_fastest"] is not None:
            low, high = found["of_fastest"]
            part += f" ({low:.3f}-{high:.3f} of {fastest})"
        parts.append(part)
    line = (f"{intervals['level']:.0%} intervals, drawing the run's {intervals['prompts']} prompts "
            f"(and their rounds) alike for every method: " + "; ".join(parts))
    return line + ("; sampling, each method writes a text of its own, which can move its figures "
                   "from run to run further than timing alone" if sampled else "")


def register(app: typer.Typer) -> None:
    @app.command("bench")
    @user_errors
    def bench(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="mlx-lm folder or hub id (default: embedded)."),
        methods: Optional[str] = typer.Option(None, "--methods", help="Comma list; NAME[key=value,...] sets options. Default: all methods."),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="question.jsonl or text lines, or `chat` / `chat2` for the built-in chat requests (default: built-in story prompts)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use the first K prompts."),
        max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
        temp: float = typer.Option(0.0, "--temp"),
        seed: int = typer.Option(0, "--seed"),
        opt: List[str] = typer.Option([], "--opt", "-o", help="METHOD.KEY=VALUE option for one method (repeatable)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: speedups and accepted lengths."),
        warmup_tokens: int = typer.Option(16, "--warmup-tokens"),
        repeat: int = typer.Option(1, "--repeat", help="Run the prompts this many rounds (every prompt of every round samples with a seed of its own: --seed + its index in the run); the speedup column then shows the rounds' range."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Decode every prompt to --max-tokens, past end-of-sequence (when sampling, methods otherwise write texts of different lengths)."),
        fresh: bool = typer.Option(False, "--fresh", help="Start every prompt with drafters that learned nothing, as one `mlxspec generate` per prompt would (`auto` reads the rates it saved at the earlier prompts' ends, in a folder of the run's own)."),
        interleave: Optional[str] = typer.Option(None, "--interleave", help="`steps`: every method decodes each prompt at once, a step of each in turn (default on the CPU); `prompts`: whole prompts in a rotating order (default on a GPU, where work runs on asynchronously)."),
        control: bool = typer.Option(False, "--control", help="Run plain decoding a second time, as `ar (control)`: its speedup per category (1.00x but for timing noise) is the band inside which this run cannot tell a method from `ar`."),
        top_p: TopPOption = 1.0,
        top_k: TopKOption = 0,
        min_p: MinPOption = 0.0,
    ):
        """Benchmark methods side by side: tokens/s, speedup, acceptance, losslessness."""
        import mlx_spec
        from mlx_spec import methods as registry
        from mlx_spec.cost import describe as describe_cost
        from mlx_spec.drafters.shared import target_cost
        from mlx_spec.bench import (INTERLEAVINGS, REFERENCE, MethodSpec, default_interleave,
                                    load_prompts, measure_rollback, mispredicted, run_bench,
                                    split_method_list)
        from mlx_spec.sampling import SamplingParams, check_seed

        check_seed(seed)
        if max_tokens < 1:
            raise mlx_spec.MlxSpecError(f"--max-tokens must be >= 1, got {max_tokens}")
        if repeat < 1:
            raise mlx_spec.MlxSpecError(f"--repeat must be >= 1, got {repeat}")
        if warmup_tokens < 1:  # (the warm-up loads and compiles what each method runs)
            raise mlx_spec.MlxSpecError(f"--warmup-tokens must be >= 1, got {warmup_tokens}")
        if interleave is not None and interleave not in INTERLEAVINGS:
            raise mlx_spec.MlxSpecError(f"--interleave must be one of {', '.join(INTERLEAVINGS)}, "
                                        f"got {interleave!r}")
        if limit is not None and limit < 1:
            raise mlx_spec.MlxSpecError(f"--limit must be >= 1, got {limit}")
        SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p)  # validates
        filters = {"top_p": top_p, "top_k": top_k, "min_p": min_p}
        if temp == 0 and filters != {"top_p": 1.0, "top_k": 0, "min_p": 0.0}:
            raise mlx_spec.MlxSpecError("--top-p, --top-k and --min-p filter sampling: set --temp")
        check_output_file("--json", json_out)
        check_output_file("--plot", plot)
        names = split_method_list(methods) if methods else [m for m in DEFAULT_METHODS if m in registry.available()]
        specs = [MethodSpec.parse(n) for n in names]
        for spec in specs:
            registry.check_name(spec.name)
        for key, value in parse_method_options(opt).items():
            method, _, option = key.partition(".")
            targets = [s for s in specs if s.name == method]
            if not option or not targets:
                raise mlx_spec.MlxSpecError(f"--opt {key}: use METHOD.KEY=VALUE for a method in --methods")
            for spec in targets:
                spec.options.setdefault(option, value)
        for spec in specs:  # every option of every method, before the model loads and runs
            registry.check_options(spec.name, **spec.options)
        if REFERENCE not in [s.label for s in specs]:
            specs.insert(0, MethodSpec(REFERENCE, REFERENCE))
        prompt_list = load_prompts(prompts)[:limit]
        spec_model = mlx_spec.load(model)
        # measured again in this run, so predictions and choosers see today's machine (and load)
        cost = target_cost(spec_model, refresh=True)  # what every method's choosers then read
        runs = len(specs) + control  # (the control: one more method, added by run_bench)
        sampling = sampling_words({"temperature": temp, **filters})
        err_console.print(f"[dim]{len(prompt_list)} prompts x {runs} methods, "
                          f"{max_tokens} tokens, {sampling}[/]")
        from rich.progress import Progress
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("bench", total=repeat * len(prompt_list) * runs)
            interleaving = interleave or default_interleave()
            stream_one = functools.partial(_stream_one, ignore_eos=ignore_eos,
                                           dispatch_ahead=interleaving != "steps",
                                           filters=filters)
            report = run_bench(spec_model, specs, prompt_list, max_tokens, temp, seed, stream_one,
                               warmup_tokens=warmup_tokens, interleave=interleaving,
                               progress=lambda label: bar.update(task, advance=1, description=label),
                               cost=cost, repeat=repeat, fresh=fresh, control=control)
        report["settings"]["ignore_eos"] = ignore_eos
        report["settings"].update(filters)
        report["cache"] = measure_rollback(
            spec_model, mlx_spec.api.encode_prompt(spec_model, prompt_list[0]["prompt"]))
        console = Console(width=None if Console().is_terminal else 120)
        console.print(render_table(f"all prompts ({len(prompt_list)})", report["methods"]))
        if len(report["by_category"]) > 1:
            for category, table in report["by_category"].items():
                console.print(render_table(f"category: {category}", table))
        machine = report["machine"]
        console.print(f"[dim]{escape(machine['backend'])} | {escape(machine['blas'])} | "
                      f"mlx {machine['mlx']} | model {escape(str(report['model']))}[/]")
        console.print(f"[dim]{escape(memory_line(report['memory']))}[/]")
        console.print(f"[dim]{escape(cache_line(report['cache']))}[/]")
        console.print(f"[dim]cost model (verify ms = measured per call, model ms = predicted for its "
                      f"mean tokens per verify): {escape(describe_cost(cost))}[/]")
        anchored = anchored_line(report["methods"])
        if anchored:
            console.print(f"[dim]{escape(anchored)}[/]")
        stalled = stall_line(report["methods"], priced=report.get("cost_model") is not None)
        if stalled:
            console.print(f"[dim]{escape(stalled)}[/]")
        if "control" in report:
            console.print(f"[dim]{escape(control_line(report['control']))}[/]")
        if "intervals" in report:
            console.print(f"[dim]{escape(intervals_line(report['intervals'], temp > 0))}[/]")
        missed = mispredicted(report["methods"])
        if missed:
            listed = "; ".join(f"{name} {ms:.1f} ms against {model_ms:.1f}"
                               for name, (ms, model_ms) in missed.items())
            err_console.print(f"[yellow]verify took longer than the cost model predicts "
                              f"({escape(listed)}): "
                              "the choosers sized drafts by it, so these timings are not what they "
                              "planned for (load that changed during the run, or work the model's "
                              "bare forwards do not show: per-shape builds, the step around the "
                              "forward); `mlxspec doctor --remeasure` on a quiet machine[/]")
        if json_out:
            json_out.write_text(json.dumps(report, indent=2))
        if plot:
            write_plot(report, plot)
        lossy = [n for n, m in report["methods"].items() if m.get("matches_ar") is False]
        if lossy:
            err_console.print(f"[bold red]output differs from ar for: {escape(', '.join(lossy))}[/]")
