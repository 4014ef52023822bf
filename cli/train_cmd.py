"""`mlxspec train-tokenizer` and `mlxspec train`: build the shipped models from text."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DISTILL_WORK_DIR, ContinuationOption, DataTempOption, GenBatchOption,
                     InstructionsOption, SelfWrittenOption, WorkDirOption, data_options,
                     user_errors)


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
        out: Path = typer.Option(..., help="Output mlx-lm model folder."),
        text: Optional[Path] = typer.Option(None, help="Training text (stories separated by newlines)."),
        tokenizer: Optional[Path] = typer.Option(None, help="Folder made by `mlxspec train-tokenizer` (with --text)."),
        instructions: InstructionsOption = False,
        self_written: SelfWrittenOption = 0,
        preset: Optional[str] = typer.Option(None, help="Architecture: target, draft or chat-draft (default: target; chat-draft with --instructions)."),
        cased: Optional[Path] = typer.Option(None, help="Original-case prefix of TEXT, to recase the rest."),
        steps: int = typer.Option(600, min=0, help="Training steps (0 with --instructions --init: score and write the draft again, e.g. with --draft-vocab)."),
        batch_size: int = typer.Option(4, min=1),
        seq_len: int = typer.Option(512, min=8),
        learning_rate: float = typer.Option(2e-3),
        seed: int = typer.Option(0),
        checkpoint_dir: Optional[Path] = typer.Option(None, help="Resumable checkpoints (default OUT.ckpt)."),
        teacher: Optional[Path] = typer.Option(None, help="Distill from this model (e.g. the target): "
                                               "match its next-token distributions."),
        init: Optional[Path] = typer.Option(None, help="Start from this model folder's weights (same preset)."),
        work_dir: WorkDirOption = DISTILL_WORK_DIR,
        contexts: int = typer.Option(1536, min=1, help="With --instructions: chat requests the teacher answers."),
        heldout_contexts: int = typer.Option(64, min=1, help="With --instructions: held-out requests."),
        continuation: ContinuationOption = 96,
        gen_batch: GenBatchOption = 48,
        temp: DataTempOption = [0.0, 0.7],
        draft_vocab: int = typer.Option(0, "--draft-vocab", min=0, help="With --instructions: the draft proposes only the K answer tokens most frequent in its training data (0: every token; with --init, the init folder's vocabulary is kept). On a large vocabulary most of a small draft's step is the vocabulary projection."),
    ):
        """Train a causal LM (llama architecture) on a text file, or (--instructions --teacher
        TARGET) distill a draft model of a chat target on its own answers; resumable."""
        from mlx_spec.errors import MlxSpecError
        from mlx_spec.train.lm import PRESETS, TrainOptions

        preset = preset or ("chat-draft" if instructions else "target")
        if preset not in PRESETS:
            raise MlxSpecError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        if steps == 0 and not (instructions and init is not None):
            raise MlxSpecError("--steps 0 only re-scores a draft: it needs --instructions and --init")
        options = TrainOptions(steps=steps, batch_size=batch_size, seq_len=seq_len,
                               learning_rate=learning_rate, seed=seed)
        if instructions:
            from mlx_spec.train.chat_draft import distill_chat_draft

            if teacher is None or text is not None:
                raise MlxSpecError("--instructions trains a draft of --teacher on its answers: "
                                   "give --teacher, and no --text")
            data, heldout = data_options(contexts, heldout_contexts, continuation, gen_batch,
                                         temp, seed)
            distill_chat_draft(str(teacher), out, work_dir.expanduser(), preset, data, heldout,
                               options, checkpoint_dir, self_written=self_written, init_dir=init,
                               vocab_size=draft_vocab, log=typer.echo)
            return
        if self_written or draft_vocab:
            raise MlxSpecError("--self-written and --draft-vocab go with --instructions")
        from mlx_spec.train.corpus import load_corpus
        from mlx_spec.train.lm import train_causal_lm

        if text is None or tokenizer is None:
            raise MlxSpecError("give --text and --tokenizer (or --instructions --teacher TARGET)")
        if not any((tokenizer / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
            # (else transformers' own messages: a hub id's rules, or "sentencepiece or tiktoken")
            raise MlxSpecError(f"--tokenizer {tokenizer}: not a tokenizer folder (no "
                               "tokenizer.model or tokenizer.json; `mlxspec train-tokenizer` "
                               "makes one)")
        corpus = load_corpus(text, cased)
        train_causal_lm(corpus.train, corpus.heldout, tokenizer, out, preset, options, checkpoint_dir,
                        teacher_dir=teacher, init_dir=init)
