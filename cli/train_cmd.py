"""`mlxspec train-tokenizer` and `mlxspec train`: build the shipped models from text."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("train-tokenizer")
    @user_errors
    def train_tokenizer(
        text: Path = typer.Option(..., help="Training text (stories separated by newlines)."),
        out: Path = typer.Option(..., help="Folder for tokenizer.model / tokenizer.json."),
        cased: Optional[Path] = typer.Option(None, help="Original-case prefix of TEXT, to recase the rest."),
        vocab_size: int = typer.Option(4096, help="Number of sentencepiece pieces."),
    ):
        """Train a sentencepiece BPE tokenizer usable by mlx-lm."""
        from mlx_spec.train.corpus import load_corpus
        from mlx_spec.train.tokenizer import train_tokenizer as train

        corpus = load_corpus(text, cased)
        train(corpus.train, out, vocab_size=vocab_size)
        typer.echo(f"wrote tokenizer to {out}")

    @app.command("train")
    @user_errors
    def train_lm(
        text: Path = typer.Option(..., help="Training text (stories separated by newlines)."),
        tokenizer: Path = typer.Option(..., help="Folder made by `mlxspec train-tokenizer`."),
        out: Path = typer.Option(..., help="Output mlx-lm model folder."),
        preset: str = typer.Option("target", help="Architecture: target or draft."),
        cased: Optional[Path] = typer.Option(None, help="Original-case prefix of TEXT, to recase the rest."),
        steps: int = typer.Option(600, min=1),
        batch_size: int = typer.Option(4, min=1),
        seq_len: int = typer.Option(512, min=8),
        learning_rate: float = typer.Option(2e-3),
        seed: int = typer.Option(0),
        checkpoint_dir: Optional[Path] = typer.Option(None, help="Resumable checkpoints (default OUT.ckpt)."),
        teacher: Optional[Path] = typer.Option(None, help="Distill from this model (e.g. the target): "
                                               "match its next-token distributions."),
        init: Optional[Path] = typer.Option(None, help="Start from this model folder's weights (same preset)."),
    ):
        """Train a causal LM (llama architecture) on a text file; resumes from its checkpoint."""
        from mlx_spec.train.corpus import load_corpus
        from mlx_spec.train.lm import PRESETS, TrainOptions, train_causal_lm

        if preset not in PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        corpus = load_corpus(text, cased)
        options = TrainOptions(steps=steps, batch_size=batch_size, seq_len=seq_len,
                               learning_rate=learning_rate, seed=seed)
        train_causal_lm(corpus.train, corpus.heldout, tokenizer, out, preset, options, checkpoint_dir,
                        teacher_dir=teacher, init_dir=init)
