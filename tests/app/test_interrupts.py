"""Ctrl-C (SIGINT) during `mlxspec distill`, `mlxspec train` and `mlxspec generate`: one line on
stderr, no traceback, exit 130; training leaves a loadable checkpoint and the same command resumes
from it and finishes. An interrupted checkpoint save (between its two renames) still resumes."""
import glob
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_spec.train.lm import Checkpoint
from support.random_models import CORPUS
from support.cli import STORIES as TRAIN_STORIES

CLI = [sys.executable, "-c", "from mlx_spec.cli.app import main; main()"]
DISTILL_STORIES = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()][:40]
SAVE_EVERY = 25  # TrainOptions.save_every, used by both commands


def start(*args) -> subprocess.Popen:
    # a terminal's Ctrl-C reaches a process whose SIGINT is not ignored (a background shell job
    # would inherit SIG_IGN and never see it)
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_when(proc: subprocess.Popen, ready, timeout: float = 120) -> tuple[str, str]:
    """Send SIGINT once ready() holds; returns (stdout, stderr) after the process ends."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before the interrupt (give it more steps): {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


def assert_clean_interrupt(proc: subprocess.Popen, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def assert_consistent(folder, step_limit: int) -> int:
    """A checkpoint folder whose three files load and agree; returns its step."""
    progress = json.loads((folder / "progress.json").read_text())
    step = progress["step"]
    assert 0 < step < step_limit and step % SAVE_EVERY == 0
    assert len(progress["losses"]) == step
    for name in ("weights", "optimizer"):
        arrays = mx.load(str(folder / f"{name}.safetensors"))
        assert arrays and all(np.isfinite(np.array(a, dtype=np.float32)).all() for a in arrays.values())
    assert mx.load(str(folder / "optimizer.safetensors"))["step"].item() == step
    return step


def interrupt_then_resume(args, checkpoint_glob: str, steps: int, outputs=()):
    """Interrupt right after the first checkpoint, check it, run again to the end. A run that
    ended with exit 0 and nothing on stderr had finished before the Ctrl-C took effect (seen
    once in a clean clone's test run, the distill's SIGINT landing as the process ended): the
    scenario did not happen, so it is run once more from scratch (`outputs` removed first); a
    Ctrl-C that the command swallowed would end the second run the same way and fail."""
    for attempt in range(2):
        proc, seen = start(*args), []
        _, err = interrupt_when(proc, lambda: seen.extend(glob.glob(checkpoint_glob)) or seen)
        if attempt or proc.returncode != 0 or err.strip():
            break
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
    line = assert_clean_interrupt(proc, err)
    folder = Path(seen[0]).parent
    assert Checkpoint(folder).exists()  # (recovers it if the Ctrl-C fell inside a save)
    step = assert_consistent(folder, steps)
    assert f"resumes from step {step}" in line
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {folder} at step {step}" in done.stdout + done.stderr
    finished = json.loads((folder / "progress.json").read_text())
    assert finished["step"] == steps and len(finished["losses"]) == steps
    return done


def test_ctrl_c_during_distill_then_resume(random_model_dirs, tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("\n".join(DISTILL_STORIES) + "\n")
    # this tiny head trains ~600 steps a second: enough steps that a loaded machine's poll still
    # catches it running (a run once finished before its Ctrl-C arrived)
    work, out, steps = tmp_path / "work", tmp_path / "head", 2000
    args = ["distill", "--model", str(random_model_dirs["llama"]), "--text", str(text), "--out", str(out),
            "--work-dir", str(work), "--contexts", "16", "--heldout-contexts", "8",
            "--continuation", "16", "--gen-batch", "8", "--exit-dim", "32", "--draft-steps", "3",
            "--steps", str(steps), "--batch-size", "4"]
    interrupt_then_resume(args, f"{work}/head-*.ckpt/progress.json", steps, (work, out))
    report = json.loads((out / "training.json").read_text())
    assert len(report["heldout"]["top1_per_step"]) == 3


def test_ctrl_c_during_train_then_resume(tmp_path):
    text, tok = tmp_path / "stories.txt", tmp_path / "tok"
    text.write_text(TRAIN_STORIES)
    made = subprocess.run([*CLI, "train-tokenizer", "--text", str(text), "--out", str(tok),
                           "--vocab-size", "300"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    out, ckpt, steps = tmp_path / "model", tmp_path / "ckpt", 400
    args = ["train", "--preset", "draft", "--text", str(text), "--tokenizer", str(tok), "--out", str(out),
            "--checkpoint-dir", str(ckpt), "--batch-size", "2", "--seq-len", "32", "--steps", str(steps)]
    interrupt_then_resume(args, f"{ckpt}/progress.json", steps, (out, ckpt))
    assert json.loads((out / "training.json").read_text())["steps"] == steps


def endless_model(folder: Path, tmp_path: Path) -> Path:
    """A copy of a random model folder without an end-of-sequence token: it writes until
    --max-tokens, so there is always something to interrupt."""
    copy = tmp_path / "endless"
    shutil.copytree(folder, copy)
    for name, key in (("config.json", "eos_token_id"), ("tokenizer_config.json", "eos_token")):
        settings = json.loads((copy / name).read_text())
        settings.pop(key, None)
        (copy / name).write_text(json.dumps(settings))
    return copy


def interrupt_generate(model: Path, *options) -> str:
    """Interrupt `mlxspec generate` once generated text streams; checks the exit, returns stdout."""
    prompt = "once upon a time"
    proc = start("generate", "--model", str(model), "--raw", "--prompt", prompt, "--max-tokens", "1900",
                 *options)
    shown = proc.stdout.read(len(prompt) + 40)  # the prompt, then generated text is streaming
    out, err = interrupt_when(proc, lambda: True)
    assert assert_clean_interrupt(proc, err) == "interrupted"
    assert (shown + out).startswith(prompt)
    return shown + out


def test_ctrl_c_during_generate(random_model_dirs, tmp_path):
    out = interrupt_generate(endless_model(random_model_dirs["llama"], tmp_path), "--method", "pld")
    assert out.endswith("\n")  # the interrupted text's line is ended


def test_ctrl_c_during_generate_leaves_the_saved_trie_whole(random_model_dirs, tmp_path):
    from mlx_spec.drafters.trie import NgramTrie

    model, saved = endless_model(random_model_dirs["llama"], tmp_path), tmp_path / "trie.npz"
    interrupt_generate(model, "--method", "lookahead", "--opt", f"save_trie={saved}")
    assert NgramTrie.load(saved).size > 0  # written as the request ended, and whole
    assert not Path(f"{saved}.partial").exists()


def test_save_interrupted_between_renames_still_resumes(tmp_path):
    import mlx.nn as nn

    model, optimizer = nn.Linear(3, 2), optim.AdamW(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    checkpoint = Checkpoint(tmp_path / "run.ckpt")
    checkpoint.save(model, optimizer, {"step": 25, "losses": [1.0] * 25})
    # the state a Ctrl-C leaves inside the next save, after `folder -> .old` and before
    # `.tmp -> folder`: the new checkpoint complete in .tmp, the previous one in .old
    Checkpoint(tmp_path / "run.ckpt.tmp").save(model, optimizer, {"step": 50, "losses": [1.0] * 50})
    (tmp_path / "run.ckpt").rename(tmp_path / "run.ckpt.old")
    again = Checkpoint(tmp_path / "run.ckpt")
    assert again.exists()
    assert again.load(model, optimizer)["step"] == 25


def test_the_interrupt_line_names_the_checkpoint_on_disk(tmp_path):
    """A Ctrl-C inside the first save, after its last rename and before the run noted the step,
    left a whole checkpoint the same command resumes from: the line says so (it said "before
    the first checkpoint": seen once in a clean clone's test run). A save stopped between its
    renames leaves the previous checkpoint as .old, which is the one named. Nothing on disk:
    before the first checkpoint."""
    def line(folder):
        with pytest.raises(KeyboardInterrupt) as raised:
            with Checkpoint(folder).resume_hint():
                raise KeyboardInterrupt
        return str(raised.value)

    done = tmp_path / "done.ckpt"
    done.mkdir()
    (done / "progress.json").write_text(json.dumps({"step": 25}))
    assert line(done) == f"interrupted; the same command resumes from step 25 ({done})"
    old = tmp_path / "half.ckpt.old"
    old.mkdir()
    (old / "progress.json").write_text(json.dumps({"step": 50}))
    assert "resumes from step 50" in line(tmp_path / "half.ckpt")
    assert line(tmp_path / "none.ckpt") == "interrupted before the first checkpoint"
