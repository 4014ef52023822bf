"""`mlxspec chat`: a REPL that streams each reply as its tokens are accepted.

Decoding runs on a background worker thread while this thread prints chunks, so Ctrl-C (which
Python delivers to the main thread) lands here: the reply is cancelled between two decoding steps,
the KV cache stays consistent, and the session goes on with the reply kept as far as it got.
"""
from __future__ import annotations

from typing import Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import (DEFAULT_METHOD, DraftModelOption, MethodOption, MethodOptionsOption,
                     ModelOption, TempOption, parse_method_options, stats_line, user_errors)

HELP = """\
/method NAME   switch decoding method (see `mlxspec methods`)
/temp T        set the sampling temperature (0 = greedy)
/stats         table of this session's turns
/reset         forget the conversation and free its caches
/save FILE     write the transcript as JSON
/help          this list
/quit          leave (Ctrl-D too); Ctrl-C stops a reply"""


class ChatRepl:
    """The loop, with its input and console injected so tests can script both."""

    def __init__(self, session, worker, console: Console,
                 read_line: Optional[Callable[[str], str]] = None):
        self.session = session
        self.worker = worker
        self.console = console
        self.read_line = read_line or (lambda prompt: console.input(prompt))
        session.on_note = self.note

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)

    def run(self) -> int:
        mode = "chat template" if self.session.uses_template else "plain continuation (no chat template)"
        self.note(f"model {self.session.model.path}; {mode}; method {self.session.method}; "
                  "/help for commands")
        while True:
            try:
                line = self.read_line("[bold green]>[/] ")
            except EOFError:
                self.console.print()
                return 0
            except KeyboardInterrupt:
                self.console.print()
                self.note("(Ctrl-D or /quit leaves)")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    return 0
                continue
            self.turn(line)

    # -- one reply -----------------------------------------------------------------------------
    def turn(self, text: str) -> None:
        from mlx_spec.errors import MlxSpecError

        try:
            chunks = self.session.send(text)
        except MlxSpecError as exc:
            self.error(str(exc))
            return
        generation = self.worker.run(chunks, self.session.method)
        interrupted = False
        try:
            for chunk in generation:
                self.console.print(chunk.text, end="", markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            generation.cancel()
            interrupted = True
        except MlxSpecError as exc:
            self.console.print()
            self.error(str(exc))
            return
        result = self._wait(generation)
        self.console.print()
        if result is not None:
            self.note(stats_line(result.stats) + (" (stopped)" if interrupted else ""))

    def _wait(self, generation):
        """Wait for the worker to stop; a second Ctrl-C while it winds down is ignored."""
        from mlx_spec.errors import MlxSpecError

        while True:
            try:
                return generation.wait()
            except KeyboardInterrupt:
                generation.cancel()
            except MlxSpecError as exc:
                self.error(str(exc))
                return None

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)

    # -- slash commands --------------------------------------------------------------------------
    def command(self, line: str) -> Optional[str]:
        from mlx_spec.errors import MlxSpecError

        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            handler = self.COMMANDS.get(name)
            if handler is None:
                raise MlxSpecError(f"unknown command {name}; /help lists them")
            return handler(self, arg)
        except MlxSpecError as exc:
            self.error(str(exc))
        return None

    def _method(self, arg: str):
        from mlx_spec.errors import MlxSpecError

        if not arg:
            raise MlxSpecError(f"usage: /method NAME (now {self.session.method})")
        self.session.set_method(arg)
        self.note(f"method {arg}")

    def _temp(self, arg: str):
        from mlx_spec.errors import MlxSpecError

        try:
            value = float(arg)
        except ValueError:
            raise MlxSpecError(f"usage: /temp T, a number >= 0 (now {self.session.temperature})") from None
        self.session.set_temperature(value)
        self.note(f"temperature {value}")

    def _stats(self, arg: str):
        table = Table(title="this session", title_style="bold", box=box.SIMPLE_HEAD)
        for column in ("turn", "method", "prompt", "prefill", "tokens", "calls", "acc/call",
                       "tok/s", "finish"):
            table.add_column(column, justify="left" if column in ("method", "finish") else "right")
        for i, t in enumerate(self.session.turns, 1):
            table.add_row(str(i), t.method, str(t.prompt_tokens), str(t.prefilled_tokens),
                          str(t.generated_tokens), str(t.target_calls), f"{t.mean_accepted:.2f}",
                          f"{t.tokens_per_s:.1f}", str(t.finish_reason))
        turns = self.session.turns
        if len(turns) > 1:
            tokens, calls = sum(t.generated_tokens for t in turns), sum(t.target_calls for t in turns)
            seconds = sum(t.generated_tokens / t.tokens_per_s for t in turns if t.tokens_per_s)
            accepted = sum(t.mean_accepted * t.target_calls for t in turns)
            table.add_section()
            table.add_row("all", "", str(sum(t.prompt_tokens for t in turns)),
                          str(sum(t.prefilled_tokens for t in turns)), str(tokens), str(calls),
                          f"{accepted / max(1, calls):.2f}", f"{tokens / seconds if seconds else 0:.1f}", "")
        self.console.print(table)

    def _reset(self, arg: str):
        self.session.reset()
        self.note("conversation cleared, caches released")

    def _save(self, arg: str):
        from mlx_spec.errors import MlxSpecError

        if not arg:
            raise MlxSpecError("usage: /save FILE")
        self.note(f"saved {self.session.save(arg)}")

    def _help(self, arg: str):
        self.console.print(HELP, markup=False, highlight=False)

    def _quit(self, arg: str):
        return "quit"

    COMMANDS = {"/method": _method, "/temp": _temp, "/stats": _stats, "/reset": _reset,
                "/save": _save, "/help": _help, "/quit": _quit, "/exit": _quit}


def register(app: typer.Typer) -> None:
    @app.command("chat")
    @user_errors
    def chat(
        model: ModelOption = None,
        method: MethodOption = DEFAULT_METHOD,
        temp: TempOption = 0.0,
        max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens per reply."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (turn i uses seed + i)."),
        system: Optional[str] = typer.Option(None, "--system", help="System prompt (chat-template models)."),
        draft_model: DraftModelOption = None,
        opt: MethodOptionsOption = [],
    ):
        """Chat with a model; replies stream as tokens are accepted. /help lists the commands."""
        import mlx_spec
        from mlx_spec.app import Worker
        from mlx_spec.chat import ChatSession
        from mlx_spec.methods import check_name

        check_name(method)
        if max_tokens < 1:
            raise mlx_spec.MlxSpecError(f"--max-tokens must be >= 1, got {max_tokens}")
        options = parse_method_options(opt)
        if draft_model is not None:
            options["draft_model"] = draft_model
        spec_model = mlx_spec.load(model)
        session = ChatSession(spec_model, method=method, temperature=temp, max_tokens=max_tokens,
                              seed=seed, system=system, method_options=options)
        try:
            import readline  # noqa: F401  (line editing and history for the prompt)
        except ImportError:  # pragma: no cover
            pass
        console = Console(highlight=False)
        with Worker(spec_model) as worker:
            code = ChatRepl(session, worker, console).run()
        raise typer.Exit(code)
