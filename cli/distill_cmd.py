"""`mlxspec distill`: train a ReDrafter head on a target's own continuations of a text."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("distill")
    @user_errors
    def distill(
        text: Optional[Path] = typer.Option(None, help="Text whose story beginnings are the contexts (stories separated by newlines)."),
        instructions: bool = typer.Option(False, "--instructions", help="Contexts are generated chat requests in the target's chat template (mlx_spec/train/instructions.py); the target writes the answers."),
        out: Path = typer.Option(..., help="Output head folder (config.json, model.safetensors, training.json)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Target mlx-lm folder (default: embedded)."),
        cased: Optional[Path] = typer.Option(None, help="Original-case prefix of TEXT, to recase the rest."),
        work_dir: Path = typer.Option(Path("~/.cache/mlx-spec/distill"), help="Cache for generated data and checkpoints."),
        contexts: int = typer.Option(2048, min=1, help="Training contexts the target continues."),
        heldout_contexts: int = typer.Option(192, min=1, help="Held-out contexts (from the held-out stories)."),
        continuation: int = typer.Option(96, min=8, help="Target tokens generated per context."),
        gen_batch: int = typer.Option(64, min=1, help="Contexts per batched target forward."),
        temp: List[float] = typer.Option([0.0], "--temp", help="Sampling temperature of the continuations (0 = greedy); repeat it to alternate shards, e.g. --temp 0 --temp 0.7."),
        exit_dim: int = typer.Option(256, min=8, help="Width of the head's residual blocks."),
        layers: int = typer.Option(2, min=0, help="Residual blocks (num_draft_layers)."),
        draft_steps: int = typer.Option(6, min=1, help="Draft steps trained (beam length up to this + 1)."),
        init_head: Optional[Path] = typer.Option(None, help="Fine-tune this head folder instead of starting fresh."),
        soft_labels: bool = typer.Option(False, "--soft-labels", help="Learn the target's whole next-token distribution (from its hidden states), not the continuation's tokens: the head then samples drafts the target accepts."),
        steps: int = typer.Option(400, min=1, help="Optimizer steps."),
        batch_size: int = typer.Option(8, min=1, help="Sequences per optimizer step."),
        learning_rate: float = typer.Option(1e-3),
        seed: int = typer.Option(0),
    ):
        """Distill a ReDrafter head (recurrent draft head) from the target; resumable."""
        from mlx_spec.errors import MlxSpecError
        from mlx_spec.train.distill import DistillPaths, HeadOptions, distill as run
        from mlx_spec.train.distill_data import DataOptions
        from mlx_spec.train.lm import TrainOptions

        if (text is None) == (not instructions):
            raise MlxSpecError("give either --text FILE or --instructions")
        if text is not None and not text.exists():
            raise MlxSpecError(f"text file not found: {text}")
        if any(t < 0 for t in temp):
            raise MlxSpecError("--temp must be >= 0")
        data = DataOptions(contexts=contexts, continuation=continuation, batch=gen_batch,
                           temperatures=tuple(temp), seed=seed)
        heldout = DataOptions(contexts=heldout_contexts, continuation=continuation,
                              batch=min(gen_batch, heldout_contexts), temperatures=tuple(temp), seed=seed + 1)
        head = HeadOptions(exit_dim=exit_dim, num_draft_layers=layers, draft_steps=draft_steps,
                           init_from=str(init_head) if init_head else None, soft_labels=soft_labels)
        train = TrainOptions(steps=steps, batch_size=batch_size, seq_len=continuation,
                             learning_rate=learning_rate, warmup_steps=min(20, steps // 10 + 1),
                             save_every=25, seed=seed)
        run(model, text, cased, DistillPaths(out=out, work_dir=work_dir.expanduser()), data,
            heldout, head, train, log=typer.echo)
