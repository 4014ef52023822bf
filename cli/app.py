"""`mlxspec`: the command-line face of mlx-spec. Each command lives in its own module."""
from __future__ import annotations

import sys
from typing import Optional

import typer

try:  # typer >= 0.22 vendors its own click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError


app = typer.Typer(help="Lossless speculative decoding for mlx-lm models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        import mlx_spec
        print(f"mlx-spec {mlx_spec.__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Optional[bool] = typer.Option(None, "--version", callback=_version,
                                                is_eager=True, help="Print the version.")):
    """Lossless speculative decoding for mlx-lm models."""


@app.command("methods")
def methods():
    """List the decoding methods."""
    from mlx_spec import methods as registry
    print("\n".join(registry.available()))


def _register_commands() -> None:
    """Every cli/*_cmd.py module adds its commands through register(app)."""
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.endswith("_cmd"):
            importlib.import_module(f"{__package__}.{info.name}").register(app)


_register_commands()


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; usage errors (unknown flags, bad values) print one line, not a usage box."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.ctx.get_help())
            sys.exit(0)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
