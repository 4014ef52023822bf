"""`mlxspec bench` reports process memory: RSS at the start, after the warm-up, after every prompt
and at the end, the peak, and MLX's allocator figures; a run that keeps memory is visible in it."""
import json
import mmap

from mlx_spec.bench import MethodSpec, run_bench
from mlx_spec.stats import GenerationStats
from support.cli import run_cli

MB = 1024 * 1024


class FakeModel:
    path = "fake"
    extras = None


def test_growth_of_a_leaking_run_is_reported():
    kept = []

    def leaking_run(model, spec, prompt, max_tokens, temperature, seed):
        block = mmap.mmap(-1, 16 * MB)  # fresh pages, written: resident (a bytes object of
        block.write(b"\x01" * (16 * MB))  # this size may reuse freed heap that is resident
        kept.append(block)                  # already, after earlier tests in the process)
        yield [1, 2], GenerationStats(method=spec.name, generated_tokens=2, target_calls=2,
                                      accepted_per_call=[1, 1], verify_s=0.01)

    prompts = [{"id": str(i), "category": "default", "prompt": "x"} for i in range(4)]
    report = run_bench(FakeModel(), [MethodSpec("ar", "ar")], prompts, 2, 0.0, 0, leaking_run)
    memory = report["memory"]
    assert len(memory["rss_after_prompt_mb"]) == 4
    assert memory["rss_growth_after_warmup_mb"] >= 4 * 16 * 0.9
    steps = [b - a for a, b in zip(memory["rss_after_prompt_mb"], memory["rss_after_prompt_mb"][1:])]
    assert all(step >= 16 * 0.9 for step in steps)
    assert memory["peak_rss_mb"] >= memory["rss_end_mb"] >= memory["rss_start_mb"] + 5 * 16 * 0.9


def test_bench_json_and_table_report_memory(tmp_path, random_model_dirs):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("once upon a time\nlily found the ball\nthe sun was warm\n")
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli("bench", "--model", str(random_model_dirs["llama"]), "--methods",
                                "ar,pld", "--prompts", str(prompts), "--max-tokens", "8",
                                "--json", str(out))
    assert code == 0, err
    memory = json.loads(out.read_text())["memory"]
    assert set(memory) >= {"rss_start_mb", "rss_after_warmup_mb", "rss_end_mb", "peak_rss_mb",
                           "rss_growth_after_warmup_mb", "rss_after_prompt_mb", "mlx_active_mb",
                           "mlx_cache_mb", "mlx_peak_mb"}
    assert len(memory["rss_after_prompt_mb"]) == 3
    assert 0 < memory["rss_start_mb"] <= memory["peak_rss_mb"]
    assert memory["rss_end_mb"] <= memory["peak_rss_mb"]
    assert "memory: RSS" in stdout and "peak" in stdout
