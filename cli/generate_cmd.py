"""`mlxspec generate`: one prompt, streamed to the terminal or returned as JSON."""
from __future__ import annotations

import inspect
import json
from typing import List, Optional

import typer

from .common import (DEFAULT_METHOD, DraftModelOption, MethodOption, MethodOptionsOption,
                     MinPOption, ModelOption, NumDraftTokensOption, TempOption, TopKOption,
                     TopPOption, parse_method_options, print_stats_line, stdout_write, user_errors)

DEFAULT_PROMPT = "Once upon a time, there was a little girl"


def register(app: typer.Typer) -> None:
    from mlx_spec.methods import cli_flags

    flags = {f.flag.lstrip("-").replace("-", "_"): f for f in cli_flags()}  # each method's own

    def generate(
        model: ModelOption = None,
        method: MethodOption = DEFAULT_METHOD,
        prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", "-p", help="Prompt text ('-' reads stdin)."),
        max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate."),
        temp: TempOption = 0.0,
        top_p: TopPOption = 1.0,
        top_k: TopKOption = 0,
        min_p: MinPOption = 0.0,
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed gives the same output with a fixed method (auto's choice of method depends on timing)."),
        raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
        stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
        draft_model: DraftModelOption = None,
        num_draft_tokens: NumDraftTokensOption = None,
        opt: MethodOptionsOption = [],
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
        **method_flags,
    ):
        """Generate text from a prompt with a speculative method (lossless)."""
        import sys

        import mlx_spec
        from mlx_spec.methods import check_name
        from mlx_spec.sampling import SamplingParams

        check_name(method)
        SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p)  # validates
        if max_tokens < 1:
            raise mlx_spec.MlxSpecError(f"--max-tokens must be >= 1, got {max_tokens}")
        if prompt == "-":
            prompt = sys.stdin.read()
        options = parse_method_options(opt)
        named = {"draft_model": draft_model, "num_draft_tokens": num_draft_tokens}
        named.update({flags[name].option: value for name, value in method_flags.items()})
        options.update({k: v for k, v in named.items() if v is not None})
        spec_model = mlx_spec.load(model)
        chunks = mlx_spec.stream_generate(spec_model, prompt, method=method, max_tokens=max_tokens,
                                          temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                                          seed=seed, raw=raw, stop=stop, **options)
        if as_json:
            result = mlx_spec.api.collect(chunks, method)
            print(json.dumps(result.to_dict()))
            return
        if not mlx_spec.api.uses_chat_template(spec_model, prompt, raw):
            stdout_write(prompt)  # plain continuation: show the text being continued
        stats = None
        try:
            for chunk in chunks:
                stdout_write(chunk.text)
                stats = chunk.stats
        finally:  # Ctrl-C included: end the text's line so the message below starts a fresh one
            stdout_write("\n")
        if stats is not None:
            print_stats_line(stats)

    # the methods' own flags join the command's signature (typer reads options from it), before --opt
    base = list(inspect.signature(generate, eval_str=True).parameters.values())[:-1]
    own = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[f.kind],
                             default=typer.Option(None, f.flag, help=f.help))
           for name, f in flags.items()]
    at = [p.name for p in base].index("opt")
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in base]
    generate.__signature__ = inspect.Signature(params[:at] + own + params[at:])
    app.command("generate")(user_errors(generate))
