"""`mlxspec`: the command-line face of mlx-spec. Each command lives in its own module."""
from __future__ import annotations

import typer

from . import train_cmd

app = typer.Typer(help="Lossless speculative decoding for mlx-lm models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
train_cmd.register(app)


def main() -> None:
    app()
