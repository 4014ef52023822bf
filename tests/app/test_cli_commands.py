"""The remaining commands through the CLI: doctor, methods, --version, and a tiny end-to-end
tokenizer + model training run that resumes from its checkpoint."""
import json

from mlx_lm import load as mlx_lm_load
from support.cli import STORIES, run_cli

def test_doctor_methods_version():
    code, out, err = run_cli("doctor")
    assert code == 0, err
    for field in ("backend", "BLAS", "sampling rows", "mlx-lm", "tinystories-target", "methods",
                  "auto's rates"):
        assert field in out
    code, out, _ = run_cli("methods")
    assert code == 0 and {"ar", "pld", "lookahead", "draft", "adaedl", "redrafter"} <= set(out.split())
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("mlx-spec ")


def test_train_tokenizer_then_train_and_resume(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text(STORIES)
    tok = tmp_path / "tok"
    code, _, err = run_cli("train-tokenizer", "--text", str(text), "--out", str(tok), "--vocab-size", "300")
    assert code == 0, err
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    common = ["train", "--preset", "draft", "--text", str(text), "--tokenizer", str(tok), "--out",
              str(out), "--checkpoint-dir", str(ckpt), "--batch-size", "2", "--seq-len", "32"]
    code, _, err = run_cli(*common, "--steps", "2")
    assert code == 0, err
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 2 and report["heldout_loss_nats"] > 0
    model, tokenizer = mlx_lm_load(str(out))  # an ordinary mlx-lm folder
    code, stdout, err = run_cli(*common, "--steps", "3")
    assert code == 0, err
    assert "resumed" in stdout + err and json.loads((out / "training.json").read_text())["steps"] == 3


def test_train_distills_a_draft_from_a_teacher(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text(STORIES)
    tok = tmp_path / "tok"
    assert run_cli("train-tokenizer", "--text", str(text), "--out", str(tok), "--vocab-size", "300")[0] == 0
    common = ["train", "--preset", "draft", "--text", str(text), "--tokenizer", str(tok),
              "--batch-size", "4", "--seq-len", "32", "--learning-rate", "3e-3"]
    teacher = tmp_path / "teacher"
    assert run_cli(*common, "--out", str(teacher), "--steps", "40")[0] == 0
    # a fresh student learns to agree with the teacher; one started from the teacher stays with it
    fresh, copy = tmp_path / "fresh", tmp_path / "copy"
    code, _, err = run_cli(*common, "--out", str(fresh), "--steps", "40", "--teacher", str(teacher),
                           "--seed", "1")
    assert code == 0, err
    code, _, err = run_cli(*common, "--out", str(copy), "--steps", "2", "--teacher", str(teacher),
                           "--init", str(teacher), "--learning-rate", "1e-5")
    assert code == 0, err
    agreement = {name: json.loads((tmp_path / name / "training.json").read_text())
                 ["heldout_top1_agreement_with_teacher"] for name in ("fresh", "copy")}
    assert agreement["copy"] > 0.95
    assert 0.3 < agreement["fresh"] < agreement["copy"]
