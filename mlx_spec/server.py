"""`mlxspec serve`: an OpenAI-compatible local HTTP server in which every method speeds up every
request (the endpoints of mlx-lm's server: /v1/chat/completions, /v1/completions, /v1/models,
/health).

Built on the standard library's ThreadingHTTPServer: the job is four JSON endpoints and one
server-sent-event stream, and a framework would add dependencies without removing code. HTTP
threads only parse, validate, queue and stream; every MLX call runs on one app.Worker thread, so
requests are served one at a time in arrival order, and the KV cache (kv.TokenCache) and each
method's learned state stay between requests: a conversation's next turn only prefills what is
new. A bounded queue answers 429 at once when full; a streaming client that disconnects cancels
its generation before the next decoding step.

Extra request fields: `method` (any of `mlxspec methods`) and `method_options` (an object of
that method's options). `usage` carries the speculative figures beside the token counts.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from . import methods
from .api import encode_prompt
from .app import CANCELLED, Worker
from .chat import continue_text
from .errors import MlxSpecError
from .loading import SpecModel
from .sampling import SamplingParams, check_seed

MAX_BODY = 8 << 20  # bytes


class ApiError(Exception):
    """A request the server refuses, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 kind: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class Defaults:
    """What a request gets for fields it leaves out (the `serve` command's flags)."""
    method: str = methods.DEFAULT
    method_options: dict = field(default_factory=dict)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None


@dataclass
class Request:
    chat: bool
    prompt_tokens: list
    method: str
    method_options: dict
    max_tokens: int
    sampling: dict          # temperature, top_p, top_k, min_p
    seed: Optional[int]
    stop: list
    stream: bool
    include_usage: bool


class Server:
    """The model, its worker thread, the admission queue and the counters of one server."""

    def __init__(self, model: SpecModel, defaults: Defaults = Defaults(), queue_size: int = 16,
                 model_id: Optional[str] = None):
        self.model = model
        self.defaults = defaults
        self.model_id = model_id or Path(model.path).name
        self.queue_size = queue_size
        self.worker = Worker(model, method=defaults.method, **defaults.method_options)
        self.counters = {"requests": 0, "completed": 0, "cancelled": 0, "rejected": 0,
                         "bad_requests": 0, "in_queue": 0}
        self._lock = threading.Lock()
        self.created = int(time.time())

    # -- admission -----------------------------------------------------------------------------
    def count(self, key: str, by: int = 1) -> None:
        with self._lock:
            self.counters[key] += by

    def admit(self) -> None:
        with self._lock:
            if self.counters["in_queue"] >= self.queue_size:
                self.counters["rejected"] += 1
                raise ApiError(429, f"the server is busy ({self.queue_size} requests queued); "
                                    "try again shortly", kind="rate_limit_error",
                               code="queue_full")
            self.counters["in_queue"] += 1

    # -- requests ------------------------------------------------------------------------------
    def parse(self, body: dict, chat: bool) -> Request:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        name = body.get("model")
        if name not in (None, "", "default", self.model_id, self.model.path):
            raise ApiError(404, f"model {name!r} is not served here; this server has "
                                f"{self.model_id!r}", param="model", code="model_not_found")
        if _get(body, "n", int, 1) != 1:
            raise ApiError(400, "only n = 1 is supported", param="n")
        if body.get("logprobs") not in (None, False, 0):
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        d = self.defaults
        max_tokens = _get(body, "max_completion_tokens", int, None)
        if max_tokens is None:
            max_tokens = _get(body, "max_tokens", int, d.max_tokens)
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be >= 1, got {max_tokens}", param="max_tokens")
        sampling = {"temperature": _get(body, "temperature", float, d.temperature),
                    "top_p": _get(body, "top_p", float, d.top_p),
                    "top_k": _get(body, "top_k", int, d.top_k),
                    "min_p": _get(body, "min_p", float, d.min_p)}
        try:
            SamplingParams(**sampling)
        except MlxSpecError as exc:
            raise ApiError(400, str(exc)) from None
        method = _get(body, "method", str, d.method)
        if method not in methods.available():
            raise ApiError(400, f"unknown method {method!r}; available: "
                                f"{', '.join(methods.available())}", param="method")
        options = _get(body, "method_options", dict, None)
        if options is not None and not all(isinstance(v, (str, int, float, bool))
                                           for v in options.values()):
            raise ApiError(400, "method_options values must be strings, numbers or booleans",
                           param="method_options")
        if options is None:
            options = d.method_options if method == d.method else {}
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ApiError(400, "stop must be a string or a list of strings", param="stop")
        stream = _get(body, "stream", bool, False)
        stream_options = _get(body, "stream_options", dict, None) or {}
        prompt_tokens = self._prompt(body, chat)
        context = self.model.context_length
        if context and len(prompt_tokens) >= context:
            raise ApiError(400, f"the prompt has {len(prompt_tokens)} tokens; the model's "
                                f"context is {context}", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        seed = _get(body, "seed", int, d.seed)
        try:
            check_seed(seed)
        except MlxSpecError as exc:
            raise ApiError(400, str(exc), param="seed") from None
        return Request(chat, prompt_tokens, method, options, max_tokens, sampling,
                       seed, stop or [], stream,
                       _get(stream_options, "include_usage", bool, False))

    def _prompt(self, body: dict, chat: bool) -> list[int]:
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                return self._encode(prompt, "prompt")  # (ids checked, not tokenized)
            if not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "prompt must be a non-empty string", param="prompt")
            return self._encode(prompt, "prompt")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        clean = []
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                parts = [p.get("text") for p in content if isinstance(p, dict)]
                content = "".join(p for p in parts if isinstance(p, str))
            if not isinstance(content, str) or not isinstance(message.get("role"), str):
                raise ApiError(400, f"messages[{i}] needs a role and text content",
                               param=f"messages[{i}]")
            clean.append({"role": message["role"], "content": content})
        tokenizer = self.model.tokenizer
        if getattr(tokenizer, "chat_template", None):
            try:
                rendered = tokenizer.apply_chat_template(clean, tokenize=False,
                                                         add_generation_prompt=True)
            except Exception as exc:  # the template's own complaint (e.g. roles out of order)
                raise ApiError(400, f"the chat template rejected the messages: {exc}",
                               param="messages") from None
        else:  # no template (the embedded story model): the messages are one continuing text
            rendered = ""
            for message in clean:
                rendered = continue_text(rendered, message["content"])
        if not rendered.strip():
            raise ApiError(400, "the messages are empty", param="messages")
        return self._encode(rendered, "messages")

    def _encode(self, prompt, param: str) -> list[int]:
        """encode_prompt's tokens, its refusals as 400s (text that is not valid UTF-8, token ids
        outside the vocabulary)."""
        try:
            return encode_prompt(self.model, prompt, raw=True)
        except MlxSpecError as exc:
            raise ApiError(400, str(exc), param=param) from None

    def submit(self, request: Request):
        return self.worker.submit(request.prompt_tokens, method=request.method,
                                  method_options=request.method_options,
                                  max_tokens=request.max_tokens, seed=request.seed,
                                  stop=request.stop, raw=True, **request.sampling)

    # -- responses -----------------------------------------------------------------------------
    def usage(self, prompt_tokens: int, stats) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": stats.generated_tokens,
                "total_tokens": prompt_tokens + stats.generated_tokens,
                "method": stats.method, "target_calls": stats.target_calls,
                "mean_accepted": round(stats.mean_accepted, 4),
                "tokens_per_s": round(stats.tokens_per_s, 3)}

    def envelope(self, request: Request, rid: str, chunk: bool) -> dict:
        kind = ("chat.completion" if request.chat else "text_completion") + (
            ".chunk" if chunk and request.chat else "")
        return {"id": rid, "object": kind, "created": int(time.time()), "model": self.model_id}

    def close(self) -> None:
        self.worker.close(cancel=True, timeout=10)


def _get(body: dict, key: str, kind, default):
    """body[key] as `kind` (ints are accepted where floats are), or `default` when absent/null."""
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value, ok = float(value), True
        except OverflowError:  # (an integer of hundreds of digits)
            ok = False
    if not ok:
        raise ApiError(400, f"{key} must be {_KIND_NAMES[kind]}, got {json.dumps(value)[:40]}",
                       param=key)
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "an object"}


def _response_id(request: Request) -> str:
    return ("chatcmpl-" if request.chat else "cmpl-") + uuid.uuid4().hex[:24]


def _finish(reason: Optional[str]) -> Optional[str]:
    return {"stop": "stop", "length": "length", "context": "length",
            CANCELLED: "cancelled"}.get(reason, reason)


class Handler(BaseHTTPRequestHandler):
    server_version = "mlx-spec"
    protocol_version = "HTTP/1.1"
    app: Server = None  # set by make_http_server

    def log_message(self, format, *args):  # one quiet line per request, never a traceback
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "GET, POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, f"the request body must be at most {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # (bad JSON or UTF-8, nesting too deep for
            # the parser, an integer of more digits than Python converts)
            raise ApiError(400, f"the body is not valid JSON: {type(exc).__name__}: "
                                f"{str(exc)[:200]}") from None

    def _guarded(self, action) -> None:
        try:
            action()
        except ApiError as exc:
            if exc.status != 429:
                self.app.count("bad_requests")
            self._try_send(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bug: answer 500 in one line, keep serving
            self._try_send(500, ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                         kind="server_error").body())

    def _try_send(self, status: int, payload: dict) -> None:
        try:
            self._send_json(status, payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- endpoints -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        def route():
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                self._send_json(200, {"status": "ok", **self.app.counters})
            elif path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [
                    {"id": self.app.model_id, "object": "model", "created": self.app.created,
                     "owned_by": "mlx-spec"}]})
            else:
                raise ApiError(404, f"no such endpoint: GET {path}", code="not_found")
        self._guarded(route)

    def do_POST(self) -> None:
        def route():
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                raise ApiError(404, f"no such endpoint: POST {path}", code="not_found")
            request = self.app.parse(self._body(), chat=path.endswith("chat/completions"))
            self.app.admit()
            self.app.count("requests")
            try:
                generation = self.app.submit(request)
                try:
                    (self._stream if request.stream else self._whole)(request, generation)
                finally:
                    generation.cancel()  # a no-op once it is done; stops one left running
                    self._settle(generation)
            finally:
                self.app.count("in_queue", -1)
        self._guarded(route)

    def _not_allowed(self) -> None:
        """Any other HTTP method (PUT, DELETE, PATCH, OPTIONS, HEAD, TRACE): a JSON 405 like
        every other refusal, not the standard library's HTML 501. The connection closes after
        it: a body sent with the request is not read."""
        self.close_connection = True

        def route():
            raise ApiError(405, f"{self.command} is not supported here: use GET or POST",
                           code="method_not_allowed")
        self._guarded(route)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = _not_allowed

    def _settle(self, generation) -> None:
        try:
            result = generation.wait()
        except Exception:
            return
        self.app.count("cancelled" if result.finish_reason == CANCELLED else "completed")

    def _whole(self, request: Request, generation) -> None:
        try:
            result = generation.wait()
        except MlxSpecError as exc:
            raise ApiError(400, str(exc)) from None
        rid = _response_id(request)
        reason = _finish(result.finish_reason)
        choice = ({"index": 0, "message": {"role": "assistant", "content": result.text},
                   "finish_reason": reason} if request.chat else
                  {"index": 0, "text": result.text, "finish_reason": reason, "logprobs": None})
        self._send_json(200, {**self.app.envelope(request, rid, chunk=False), "choices": [choice],
                              "usage": self.app.usage(len(request.prompt_tokens), result.stats)})

    def _stream(self, request: Request, generation) -> None:
        chunks = iter(generation)
        try:  # the first chunk (or the request's error) before any header is sent
            first = next(chunks, None)
        except MlxSpecError as exc:
            raise ApiError(400, str(exc)) from None
        rid = _response_id(request)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if request.chat:
                self._event(request, rid, {"role": "assistant", "content": ""}, None)
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                self._event(request, rid, chunk.text, None)
            result = generation.wait()
            self._event(request, rid, "", _finish(result.finish_reason))
            if request.include_usage:
                self._write({**self.app.envelope(request, rid, chunk=True), "choices": [],
                             "usage": self.app.usage(len(request.prompt_tokens), result.stats)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            generation.cancel()  # the client left: stop before the next decoding step
        except MlxSpecError as exc:  # an error after streaming began: one last event
            self._write(ApiError(400, str(exc)).body())

    def _event(self, request: Request, rid: str, text, finish: Optional[str]) -> None:
        if request.chat:
            delta = text if isinstance(text, dict) else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        self._write({**self.app.envelope(request, rid, chunk=True), "choices": [choice]})

    def _write(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a dropped connection is not news
        pass


def make_http_server(app: Server, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    try:
        return _HTTPServer((host, port), handler)
    except OSError as exc:
        raise MlxSpecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
