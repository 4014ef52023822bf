"""`mlxspec dsi-sim`: expected time per token of non-SI, SI and DSI from latencies and an
acceptance rate, given or measured on models; picks the block (drafts per job) and shows what more workers buy."""
from __future__ import annotations

import json
import math
from typing import Optional

import typer

from .common import fail, user_errors


def register(app: typer.Typer) -> None:
    @app.command("dsi-sim")
    @user_errors
    def dsi_sim(
        target_ms: Optional[float] = typer.Option(None, "--target-ms", help="Target forward latency (ms)."),
        drafter_ms: Optional[float] = typer.Option(None, "--drafter-ms", help="Drafter latency per token (ms)."),
        acceptance: Optional[float] = typer.Option(None, "--acceptance", help="Per-draft acceptance rate (0..1)."),
        target_per_token_ms: float = typer.Option(0.0, "--target-per-token-ms", help="Extra target ms per verified token."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Measure the inputs on this target instead."),
        draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Drafter to measure (default: embedded)."),
        prompt: str = typer.Option("Once upon a time, there was a little girl", "--prompt", "-p"),
        max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="Tokens per measuring run."),
        block: int = typer.Option(0, "--block", "--lookahead", "-k", help="Drafts per job, the DSI paper's lookahead (0: pick the best of 1..10)."),
        workers: int = typer.Option(2, "--workers", help="Target workers."),
        overhead_ms: float = typer.Option(0.0, "--overhead-ms", help="Per-job messaging overhead (ms)."),
        tokens: int = typer.Option(3000, "--tokens", help="Tokens per simulated run."),
        run_dsi: bool = typer.Option(False, "--run-dsi", help="With --model: also run dsi and compare."),
        paper_grid: bool = typer.Option(False, "--paper-grid", help="The paper's Figure 2 grid: best DSI speedups."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ):
        """Predict non-SI / SI / DSI time per token (the DSI paper's cost model, and an event
        simulation of this project's scheduler)."""
        from mlx_spec.dsi.simulator import (Setting, best_block, paper_heatmap_max_speedup,
                                            predict, required_workers, si_time_per_token)

        if paper_grid:
            over_si, over_best = paper_heatmap_max_speedup()
            print(f"paper grid (c, a in 0..1, k 1..10, 7 target servers): DSI up to {over_si:.2f}x "
                  f"faster than SI, {over_best:.2f}x faster than min(SI, non-SI)")
            return
        if not 1 <= workers <= 64 or not 1 <= tokens <= 20_000 or not 0 <= block <= 64:  # (20000
            # simulated tokens take ~15 s; more only take longer)
            fail("need 1 <= --workers <= 64, 1 <= --tokens <= 20000 and 0 <= --block <= 64")
        times = (target_ms, drafter_ms, target_per_token_ms, overhead_ms)
        if any(t is not None and not 0 <= t < math.inf for t in times):  # (NaN fails too)
            fail("times (ms) must be finite numbers >= 0")
        measured = None
        if model is not None:
            import mlx_spec
            from mlx_spec.dsi.measure import measure

            measured = measure(mlx_spec.load(model), prompt, max_tokens, block or 4,
                               draft_model=draft_model, workers=workers)
            setting = measured.setting
            setting.overhead = overhead_ms / 1000
        elif None in (target_ms, drafter_ms, acceptance):
            fail("give --target-ms, --drafter-ms and --acceptance, or --model to measure them")
        else:
            if not 0 <= acceptance <= 1 or target_ms <= 0 or drafter_ms < 0:
                fail("need target-ms > 0, drafter-ms >= 0 and 0 <= acceptance <= 1")
            setting = Setting(target_ms / 1000, drafter_ms / 1000, acceptance, block or 4,
                              workers, target_per_token_ms / 1000, overhead_ms / 1000)
        si_block = block
        if block == 0:  # each method at its own best block, as the paper compares them
            setting.block = best_block(setting)[0]
            si_block = min(range(1, 11), key=lambda k: si_time_per_token(
                Setting(**{**setting.__dict__, "block": k})))
        p = predict(setting, tokens=tokens)
        p.si = si_time_per_token(Setting(**{**setting.__dict__, "block": si_block}))
        needed = required_workers(setting)
        report = {
            "setting": {**{k: round(v, 6) if isinstance(v, float) else v for k, v in setting.__dict__.items()},
                        "lookahead": setting.block},  # the block's published earlier name
            "ms_per_token": {"nonsi": p.nonsi * 1e3, "si": p.si * 1e3, "dsi": p.dsi * 1e3,
                             "dsi_paper_model": p.dsi_paper * 1e3},
            "tokens_per_s": {"nonsi": 1 / p.nonsi, "si": 1 / p.si, "dsi": 1 / p.dsi,
                             "dsi_paper_model": 1 / p.dsi_paper},
            "si_lookahead": si_block, "dsi_over_si": p.dsi_over_si, "dsi_over_best": p.dsi_over_best,
            "paper_model_workers_needed": needed,
        }
        if measured is not None:
            report["measured_tokens_per_s"] = {"ar": measured.ar_tokens_per_s,
                                               "si": measured.si_tokens_per_s}
            if run_dsi:
                from mlx_spec.dsi.measure import measure_dsi
                from mlx_spec.dsi.simulator import simulate_dsi_time_per_token

                dsi = measure_dsi(mlx_spec.load(model), prompt, max_tokens, setting.block,
                                  draft_model=draft_model, workers=workers)
                report["measured_tokens_per_s"]["dsi"] = dsi.tokens_per_s
                report["dsi_lossless"] = dsi.lossless
                # the same scheduler with the target latency the run actually saw (on a shared
                # machine the workers slow each other down, and messages cost time)
                in_situ = Setting(**{**setting.__dict__, "target": dsi.reply_s, "target_per_token": 0.0})
                report["dsi_reply_ms"] = dsi.reply_s * 1e3
                report["tokens_per_s"]["dsi_in_situ"] = 1 / simulate_dsi_time_per_token(in_situ, tokens)
        if as_json:
            print(json.dumps(report))
            return
        s = setting
        print(f"target {s.target * 1e3:.2f} ms (+{s.target_per_token * 1e3:.2f} ms per verified token), "
              f"drafter {s.drafter * 1e3:.2f} ms/token, acceptance {s.acceptance:.2f}, "
              f"block {s.block} drafts per job, workers {s.workers}")
        names = {"nonsi": "non-SI", "si": f"SI (block {si_block})", "dsi": "DSI (this scheduler)",
                 "dsi_paper_model": f"DSI (paper model, >= {needed} workers)"}
        for key, name in names.items():
            print(f"  {name:<34} {report['ms_per_token'][key]:8.2f} ms/token "
                  f"{report['tokens_per_s'][key]:8.1f} tokens/s")
        print(f"  DSI vs SI {p.dsi_over_si:.2f}x, vs min(SI, non-SI) {p.dsi_over_best:.2f}x")
        if measured is not None:
            line = (f"  measured: ar {measured.ar_tokens_per_s:.1f} tokens/s, "
                    f"SI {measured.si_tokens_per_s:.1f} tokens/s")
            if "dsi" in report["measured_tokens_per_s"]:
                line += (f", DSI {report['measured_tokens_per_s']['dsi']:.1f} tokens/s (lossless: "
                         f"{report['dsi_lossless']}; mean job round trip {report['dsi_reply_ms']:.1f} ms"
                         f" -> simulated {report['tokens_per_s']['dsi_in_situ']:.1f} tokens/s)")
            print(line)
