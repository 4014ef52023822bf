"""`mlxspec convert`: import a llama2.c checkpoint and tokenizer as an mlx-lm model folder."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .common import err_console, user_errors


class WeightsBar:
    """A rich progress bar that appears with the first converted tensor, so errors found while
    reading the headers print as one clean line."""

    def __init__(self):
        self.progress = None

    def __call__(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("converting weights"), BarColumn(),
                                     MofNCompleteColumn(), console=err_console, transient=True,
                                     disable=not err_console.is_terminal)
            self.progress.start()
            self.task = self.progress.add_task("weights", total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def register(app: typer.Typer) -> None:
    @app.command("convert")
    @user_errors
    def convert(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="llama2.c model .bin (legacy or version-1 fp32 export)."),
        tokenizer: Path = typer.Option(..., "--tokenizer", help="llama2.c tokenizer .bin (e.g. tokenizer.bin, tok512.bin)."),
        out: Path = typer.Option(..., "--out", help="Output mlx-lm model folder."),
        force: bool = typer.Option(False, "--force", help="Write into OUT even if it is not empty."),
    ):
        """Convert a llama2.c checkpoint into an mlx-lm folder usable with --model."""
        from mlx_spec.convert import convert_llama2c

        bar = WeightsBar()
        try:
            convert_llama2c(checkpoint, tokenizer, out, overwrite=force, progress=bar)
        finally:
            bar.close()
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        err_console.print(escape(f"wrote {out} ({size / 1e6:.1f} MB); try: mlxspec generate "
                                 f"--model {out}"))
