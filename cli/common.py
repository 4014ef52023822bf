"""Shared CLI plumbing: one-line errors, method options, the stats line."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True, highlight=False)

# Options shared by the commands that decode (generate, chat), declared once.
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="mlx-lm folder or hub id (default: the embedded story model).")]
# mlx_spec.methods.DEFAULT, spelled here so that `--help` does not import mlx (a test keeps them equal)
DEFAULT_METHOD = "auto"
MethodOption = Annotated[str, typer.Option("--method", help="Decoding method (see `mlxspec methods`).")]
TempOption = Annotated[float, typer.Option("--temp", help="Sampling temperature (0 = greedy).")]
DraftModelOption = Annotated[Optional[str], typer.Option(
    "--draft-model", help="Draft model for draft/adaedl/dsi.")]
MethodOptionsOption = Annotated[List[str], typer.Option(
    "--opt", "-o", help="Method option KEY=VALUE (repeatable).")]
TopPOption = Annotated[float, typer.Option("--top-p")]
TopKOption = Annotated[int, typer.Option("--top-k")]
MinPOption = Annotated[float, typer.Option("--min-p")]
NumDraftTokensOption = Annotated[Optional[int], typer.Option(
    "--num-draft-tokens", help="Draft length for chain methods.")]


# Options of the commands that make the target write distillation data (distill, train
# --instructions): the same values name the same cached data, so the two commands share it.
InstructionsOption = Annotated[bool, typer.Option(
    "--instructions", help="Contexts are generated chat requests in the target's chat template "
    "(mlx_spec/train/instructions.py); the target writes the answers.")]
SelfWrittenOption = Annotated[int, typer.Option(
    "--self-written", min=0, help="With --instructions: also this many requests written by the "
    "target itself as user turns of its chat template (more varied than the templates'); the "
    "target answers them too.")]
WorkDirOption = Annotated[Path, typer.Option(help="Cache for generated data and checkpoints.")]
ContinuationOption = Annotated[int, typer.Option(min=8, help="Target tokens generated per context.")]
GenBatchOption = Annotated[int, typer.Option(min=1, help="Contexts per batched target forward.")]
DataTempOption = Annotated[List[float], typer.Option(
    "--temp", help="Sampling temperature of the continuations (0 = greedy); repeat it to "
    "alternate shards, e.g. --temp 0 --temp 0.7.")]
DISTILL_WORK_DIR = Path("~/.cache/mlx-spec/distill")


def data_options(contexts: int, heldout_contexts: int, continuation: int, gen_batch: int,
                 temp: list[float], seed: int):
    """(training, held-out) DataOptions from the shared options."""
    from mlx_spec.errors import MlxSpecError
    from mlx_spec.train.distill_data import DataOptions

    if any(t < 0 for t in temp):
        raise MlxSpecError("--temp must be >= 0")
    return (DataOptions(contexts=contexts, continuation=continuation, batch=gen_batch,
                        temperatures=tuple(temp), seed=seed),
            DataOptions(contexts=heldout_contexts, continuation=continuation,
                        batch=min(gen_batch, heldout_contexts), temperatures=tuple(temp),
                        seed=seed + 1))

def fail(message: str, code: int = 1) -> None:
    """`message` on stderr as one line, then exit with `code`. The message is escaped: it quotes
    what the user typed (a method spec `auto[methods=...]`, a path), which rich would read as
    markup (dropping it, or raising on a stray closing tag such as `[/x]`)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def parse_numbers(flag: str, text: str) -> list[float]:
    """A comma list of numbers (--temps), or a one-line error naming `flag`."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            fail(f"{flag}: {part!r} is not a number")
    return values


def check_output_file(flag: str, path: Optional[Path]) -> None:
    """Refuse now an output file that could not be written at the end (a folder, or one in a
    folder that does not exist): a bench or a test run would otherwise lose its whole report."""
    if path is None:
        return
    if path.is_dir() or not str(path).strip():
        fail(f"{flag} {path}: give a file name, not a folder")
    if not path.parent.is_dir():
        fail(f"{flag} {path}: no folder {path.parent} to write it in")


def user_errors(command):
    """Turn the library's user-facing errors into one line on stderr and a non-zero exit."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from mlx_spec.errors import MlxSpecError
        try:
            return command(*args, **kwargs)
        except MlxSpecError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt as exc:  # Ctrl-C: one line (what to do next, when known)
            err_console.print(f"[dim]{escape(str(exc) or 'interrupted')}[/]", soft_wrap=True)
            raise typer.Exit(130)
    return wrapper


def parse_method_options(pairs: list[str]) -> dict:
    """`--opt key=value` pairs -> keyword arguments (ints, floats, booleans, or strings)."""
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            fail(f"method option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def stats_line(stats) -> str:
    return (f"{stats.generated_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
            f"{stats.mean_accepted:.2f} accepted per target call ({stats.target_calls} calls), "
            f"method {stats.method}")


def print_stats_line(stats) -> None:
    err_console.print(f"[dim]{escape(stats_line(stats))}[/]")


def stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
