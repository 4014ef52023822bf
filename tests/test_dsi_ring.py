"""DSI for real: rank 0 here, two worker processes over mx.distributed's ring backend on
127.0.0.1 (tiny random models), compared token for token with autoregressive decoding."""
import subprocess
import sys
import textwrap
from pathlib import Path

from random_models import make_model_folder

SCRIPT = textwrap.dedent('''
    import json, sys
    import mlx_spec
    target, drafter = sys.argv[1], sys.argv[2]
    model = mlx_spec.load(target)
    prompt = "once upon a time there was"
    ar = mlx_spec.generate(model, prompt, method="ar", max_tokens=30, raw=True).token_ids
    report = {}
    for name, draft, lookahead in [("same", target, 4), ("other", drafter, 2)]:
        r = mlx_spec.generate(model, prompt, method="dsi", max_tokens=30, raw=True, workers=2,
                              draft_model=draft, lookahead=lookahead)
        report[f"{name}-{lookahead}"] = [r.token_ids == ar, r.stats.target_calls,
                                         r.stats.accepted_drafts, len(r.token_ids)]
    # kill a worker process mid-generation: the other one finishes, still losslessly
    from mlx_spec.dsi import launch
    decoder = mlx_spec.make_decoder(model, "dsi", workers=2, draft_model=target, lookahead=2)
    ids = []
    chunks = mlx_spec.stream_generate(model, prompt, method="dsi", max_tokens=30, raw=True,
                                      decoder=decoder)
    for i, chunk in enumerate(chunks):
        ids.extend(chunk.token_ids)
        if i == 1:
            launch._POOL.processes[0].kill()
    orch = decoder.orchestrator
    report["killed"] = [ids == ar, orch.live, len(orch.counters.failures), len(ids)]
    print("REPORT", json.dumps(report), flush=True)
''')


def test_two_worker_ring_run_is_lossless(tmp_path):
    target = make_model_folder(tmp_path / "target", "llama", seed=0)
    drafter = make_model_folder(tmp_path / "draft", "llama", seed=1)
    script = tmp_path / "run_dsi.py"
    script.write_text(SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(target), str(drafter)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=240)  # generous: shared CI machines
    finally:
        if process.poll() is None:  # never leave the orchestrator (or its workers) behind
            import os
            import signal
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = [line for line in out.splitlines() if line.startswith("REPORT ")]
    assert process.returncode == 0 and lines, err[-2000:]
    import json
    report = json.loads(lines[-1][len("REPORT "):])
    equal, live, failures, n = report.pop("killed")
    assert equal and n == 30
    assert live == [2] and failures == 1
    assert "DSI worker 1 failed" in err
    for name, (equal, calls, accepted, n) in report.items():
        assert equal, name
        assert n == 30
    # a drafter identical to the target has its drafts accepted: far fewer jobs than tokens (how
    # many drafts each job carries depends on timing: a job leaves early when nothing is in flight)
    assert report["same-4"][1] <= 15 and report["same-4"][2] >= 15
    # a random drafter is rejected every time: one token per job, like autoregressive decoding
    assert report["other-2"][1] >= 25
