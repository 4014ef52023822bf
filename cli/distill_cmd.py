"""`mlxspec distill`: train a ReDrafter head on a target's own continuations of a text."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DISTILL_WORK_DIR, ContinuationOption, DataTempOption, GenBatchOption,
                     InstructionsOption, SelfWrittenOption, WorkDirOption, data_options,
                     user_errors)


def register(app: typer.Typer) -> None:
    @app.command("distill")
    @user_errors
    def distill(
        text: Optional[Path] = typer.Option(None, help="Text whose story beginnings are the contexts (stories separated by newlines)."),
        instructions: InstructionsOption = False,
        self_written: SelfWrittenOption = 0,
        out: Path = typer.Option(..., help="Output head folder (config.json, model.safetensors, training.json)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Target mlx-lm folder (default: embedded)."),
        cased: Optional[Path] = typer.Option(None, help="Original-case prefix of TEXT, to recase the rest."),
        work_dir: WorkDirOption = DISTILL_WORK_DIR,
        contexts: int = typer.Option(2048, min=1, help="Training contexts the target continues."),
        heldout_contexts: int = typer.Option(192, min=1, help="Held-out contexts (from the held-out stories)."),
        continuation: ContinuationOption = 96,
        gen_batch: GenBatchOption = 64,
        temp: DataTempOption = [0.0],
        exit_dim: int = typer.Option(256, min=8, help="Width of the head's residual blocks."),
        layers: int = typer.Option(2, min=0, help="Residual blocks (num_draft_layers)."),
        draft_steps: int = typer.Option(6, min=1, help="Draft steps trained (beam length up to this + 1)."),
        init_head: Optional[Path] = typer.Option(None, help="Fine-tune this head folder instead of starting fresh."),
        soft_labels: bool = typer.Option(False, "--soft-labels", help="Learn the target's whole next-token distribution (from its hidden states), not the continuation's tokens: the head then samples drafts the target accepts."),
        draft_vocab: int = typer.Option(0, "--draft-vocab", min=0, help="Draft (and learn) only the K target tokens most frequent in the training answers (0: every token; a fine-tuned head keeps its own). On a large vocabulary most of a draft step is the vocabulary projection."),
        steps: int = typer.Option(400, min=1, help="Optimizer steps."),
        batch_size: int = typer.Option(8, min=1, help="Sequences per optimizer step."),
        learning_rate: float = typer.Option(1e-3),
        seed: int = typer.Option(0),
    ):
        """Distill a ReDrafter head (recurrent draft head) from the target; resumable."""
        from mlx_spec.errors import MlxSpecError
        from mlx_spec.train.distill import DistillPaths, HeadOptions, distill as run
        from mlx_spec.train.lm import TrainOptions

        if (text is None) == (not instructions):
            raise MlxSpecError("give either --text FILE or --instructions")
        if self_written and not instructions:
            raise MlxSpecError("--self-written adds chat requests: it goes with --instructions")
        if text is not None and (not text.exists() or text.is_dir()):
            raise MlxSpecError(f"text file not found: {text}" if not text.exists() else
                               f"--text {text} is a folder, not a text file")
        if init_head is not None and not (init_head / "config.json").is_file():
            raise MlxSpecError(f"--init-head {init_head}: not a head folder (no config.json)")
        if not 0 < learning_rate < 1:  # (NaN too)
            raise MlxSpecError(f"--learning-rate must be in (0, 1), got {learning_rate}")
        data, heldout = data_options(contexts, heldout_contexts, continuation, gen_batch, temp, seed)
        head = HeadOptions(exit_dim=exit_dim, num_draft_layers=layers, draft_steps=draft_steps,
                           init_from=str(init_head) if init_head else None, soft_labels=soft_labels,
                           draft_vocab=draft_vocab)
        train = TrainOptions(steps=steps, batch_size=batch_size, seq_len=continuation,
                             learning_rate=learning_rate, warmup_steps=min(20, steps // 10 + 1),
                             save_every=25, seed=seed)
        run(model, text, cased, DistillPaths(out=out, work_dir=work_dir.expanduser()), data,
            heldout, head, train, self_written=self_written, log=typer.echo)
