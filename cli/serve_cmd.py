"""`mlxspec serve`: an OpenAI-compatible local server (mlx_spec/server.py)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from .common import (DEFAULT_METHOD, DraftModelOption, MethodOption, MethodOptionsOption,
                     MinPOption, ModelOption, NumDraftTokensOption, TempOption, TopKOption,
                     TopPOption, err_console, parse_method_options, user_errors)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    @user_errors
    def serve(
        model: ModelOption = None,
        method: MethodOption = DEFAULT_METHOD,
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port)."),
        max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Default reply length."),
        temp: TempOption = 0.0,
        top_p: TopPOption = 1.0,
        top_k: TopKOption = 0,
        min_p: MinPOption = 0.0,
        seed: Optional[int] = typer.Option(None, "--seed", help="Default seed of sampled requests."),
        draft_model: DraftModelOption = None,
        num_draft_tokens: NumDraftTokensOption = None,
        opt: MethodOptionsOption = [],
        queue_size: int = typer.Option(16, "--queue-size", help="Requests waiting at most; more get 429."),
    ):
        """Serve the model over an OpenAI-compatible HTTP API; every request is decoded
        speculatively (`method` and `method_options` in a request's body override the defaults)."""
        import mlx_spec
        from mlx_spec.methods import check_name
        from mlx_spec.sampling import SamplingParams, check_seed
        from mlx_spec.server import Defaults, Server, make_http_server

        check_name(method)
        SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p)
        check_seed(seed)
        if max_tokens < 1 or queue_size < 1:
            raise mlx_spec.MlxSpecError("--max-tokens and --queue-size must be >= 1")
        if not 0 <= port <= 65535:
            raise mlx_spec.MlxSpecError(f"--port must be in 0..65535, got {port}")
        options = parse_method_options(opt)
        named = {"draft_model": draft_model, "num_draft_tokens": num_draft_tokens}
        options.update({k: v for k, v in named.items() if v is not None})
        spec_model = mlx_spec.load(model)
        mlx_spec.make_decoder(spec_model, method, **options)  # bad options: refused now
        defaults = Defaults(method, options, max_tokens, temp, top_p, top_k, min_p, seed)
        server = Server(spec_model, defaults, queue_size=queue_size)
        http = make_http_server(server, host, port)
        bound_host, bound_port = http.server_address[:2]
        err_console.print(f"serving {escape(server.model_id)} with {escape(method)} on "
                          f"http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)")
        try:
            http.serve_forever()
        except KeyboardInterrupt:
            err_console.print("[dim]stopped[/]")
        finally:
            http.server_close()
            server.close()
