"""`mlxspec serve` driven over real HTTP: with the official `openai` client and with raw requests.
Replies equal mlx_spec.generate's for the same prompt and method; concurrent clients each get
their own reply; a client that leaves mid-stream stops its generation; bad requests get 4xx in
OpenAI's error shape; memory stays flat over many requests."""
import http.client
import json
import socket
import threading
import time

import pytest

import mlx_spec
from mlx_spec.bench import memory
from mlx_spec.server import Defaults, Server, make_http_server
from support.random_models import make_model_folder

CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
PROMPT = "lily found the ball under a big green tree and smiled. lily found the ball"
METHODS = ["ar", "pld", "lookahead", "draft", "adaedl", "mlx-lm"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    target = make_model_folder(root / "target", "llama", seed=0)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    return {"target": target, "draft": make_model_folder(root / "draft", "llama", seed=0,
                                                         weight_scale=3.0)}


@pytest.fixture(scope="module")
def model(folders):
    return mlx_spec.load(str(folders["target"]))


def start(model, folders, **kwargs):
    defaults = Defaults(method="pld", max_tokens=24)
    server = Server(model, defaults, **kwargs)
    server.defaults.method_options = {}
    http = make_http_server(server, "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return server, http


@pytest.fixture(scope="module")
def served(model, folders):
    server, http = start(model, folders)
    yield server, http.server_address[1]
    http.shutdown()
    http.server_close()
    server.close()


def options_for(method, folders):
    return {"draft_model": str(folders["draft"])} if method in ("draft", "adaedl", "mlx-lm") else {}


def post(port, path, body, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=raw if raw is not None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def events(data: bytes) -> list:
    lines = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def streamed_text(data: bytes, chat: bool) -> str:
    parts = []
    for event in events(data):
        for choice in event["choices"]:
            parts.append(choice["delta"].get("content", "") if chat else choice["text"])
    return "".join(parts)


@pytest.mark.parametrize("method", METHODS)
def test_replies_equal_generate_streamed_or_not(served, model, folders, method):
    _, port = served
    options = options_for(method, folders)
    plain = mlx_spec.generate(model, PROMPT, method=method, max_tokens=24, raw=True, **options)
    templated = mlx_spec.generate(model, PROMPT, method=method, max_tokens=24, **options)
    for stream in (False, True):
        common = {"max_tokens": 24, "method": method, "method_options": options, "stream": stream}
        status, data = post(port, "/v1/completions", {"prompt": PROMPT, **common})
        assert status == 200
        text = (streamed_text(data, chat=False) if stream
                else json.loads(data)["choices"][0]["text"])
        assert text == plain.text
        status, data = post(port, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": PROMPT}], **common})
        assert status == 200
        if stream:
            assert streamed_text(data, chat=True) == templated.text
        else:
            reply = json.loads(data)
            assert reply["choices"][0]["message"]["content"] == templated.text
            usage = reply["usage"]
            assert usage["completion_tokens"] == len(templated.token_ids)
            assert usage["method"] == method and usage["target_calls"] >= 1
            assert usage["mean_accepted"] >= 1.0 and usage["tokens_per_s"] > 0


def test_the_openai_client(served, model):
    from openai import OpenAI

    server, port = served
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    expected = mlx_spec.generate(model, PROMPT, method="lookahead", max_tokens=20).text
    reply = client.chat.completions.create(
        model=server.model_id, messages=[{"role": "user", "content": PROMPT}], max_tokens=20,
        temperature=0, extra_body={"method": "lookahead"})
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=server.model_id, messages=[{"role": "user", "content": PROMPT}], max_tokens=20,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"method": "lookahead"})
    parts, usage = [], None
    for chunk in stream:
        parts.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(parts) == expected and usage.completion_tokens > 0
    plain = mlx_spec.generate(model, PROMPT, method="pld", max_tokens=20, raw=True).text
    assert client.completions.create(model=server.model_id, prompt=PROMPT,
                                     max_tokens=20).choices[0].text == plain
    assert [m.id for m in client.models.list()] == [server.model_id]


def test_a_seeded_sampled_request_repeats_exactly(served):
    _, port = served
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9, "seed": 5, "method": "pld"}
    first = json.loads(post(port, "/v1/completions", body)[1])["choices"][0]["text"]
    again = json.loads(post(port, "/v1/completions", body)[1])["choices"][0]["text"]
    other = json.loads(post(port, "/v1/completions", {**body, "seed": 6})[1])["choices"][0]["text"]
    assert first == again and first != other


def test_eight_concurrent_clients_each_get_their_own_reply(served, model):
    _, port = served
    prompts = [f"{PROMPT} {word}" for word in
               ("sun", "tree", "bird", "park", "red", "warm", "lily", "green")]
    expected = [mlx_spec.generate(model, p, method="pld", max_tokens=16, raw=True).text
                for p in prompts]
    got = [None] * len(prompts)

    def client(i):
        stream = i % 2 == 1
        status, data = post(port, "/v1/completions", {"prompt": prompts[i], "max_tokens": 16,
                                                      "stream": stream})
        assert status == 200
        got[i] = streamed_text(data, False) if stream else json.loads(data)["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected


def test_a_client_that_leaves_mid_stream_stops_its_generation(served):
    server, port = served
    before = dict(server.counters)
    body = json.dumps({"prompt": PROMPT, "max_tokens": 1500, "stream": True, "method": "ar"})
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    received = b""
    while received.count(b"data: ") < 4:
        received += sock.recv(4096)
    sock.close()
    deadline = time.time() + 30
    while server.counters["cancelled"] == before["cancelled"] and time.time() < deadline:
        time.sleep(0.05)
    assert server.counters["cancelled"] == before["cancelled"] + 1
    status, health = get(port, "/health")  # and the server goes on
    assert status == 200 and health["in_queue"] == 0
    status, data = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
    assert status == 200


BAD = [
    ("/v1/chat/completions", None, b"{not json", 400),
    ("/v1/chat/completions", {"max_tokens": 4}, None, 400),                       # no messages
    ("/v1/chat/completions", {"messages": "hi"}, None, 400),                      # wrong type
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, None, 400),        # no content
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": "ten"}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": -3}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "temperature": -1}, None, 400),
    ("/v1/completions", None, b'{"prompt": "Once", "temperature": NaN}', 400),  # (json reads NaN)
    ("/v1/completions", {"prompt": PROMPT, "method": "telepathy"}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "method_options": {"wings": 2}}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "stop": 3}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "n": 2}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "model": "gpt-4o"}, None, 404),
    ("/v1/completions", {"prompt": list(range(3, 250)) * 10}, None, 400),        # > context
    ("/v1/completions", {"prompt": [5, 10 ** 6]}, None, 400),   # not in the vocabulary (the
    ("/v1/completions", {"prompt": [-1]}, None, 400),           # embedding read past its table:
    # the server died of a segmentation fault)
    ("/v1/completions", {"prompt": PROMPT, "temperature": 0.7, "seed": -1}, None, 400),  # (500s
    ("/v1/completions", {"prompt": "bad \ud800 text"}, None, 400),                   # before)
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, None, 400),
    ("/v1/completions", {"prompt": [True]}, None, 400),
    ("/v1/completions", {"prompt": PROMPT, "stream": True, "stream_options": {"include_usage": "x"}},
     None, 400),
    ("/v1/completions", None, b"[" * 100000 + b"]" * 100000, 400),  # too deep to parse
    ("/v1/completions", None, b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400),
    ("/v1/completions", None, b'{"prompt": "x", "temperature": ' + b"9" * 400 + b"}", 400),
    ("/v1/completions", {"prompt": PROMPT, "stream": True, "method_options": {"x": 1}}, None, 400),
    ("/v1/embeddings", {"input": "x"}, None, 404),
]


@pytest.mark.parametrize("path, body, raw, status", BAD)
def test_bad_requests_get_a_4xx_in_openai_shape(served, path, body, raw, status):
    server, port = served
    got, data = post(port, path, body, raw)
    assert got == status
    error = json.loads(data)["error"]
    assert error["message"] and error["type"] and "Traceback" not in error["message"]
    assert get(port, "/health")[0] == 200


@pytest.mark.parametrize("verb", ["DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"])
def test_other_http_methods_get_a_json_405(served, verb):
    """Not the standard library's HTML 501: a 405 in OpenAI's error shape, and the server goes
    on answering (the request's body, unread, closes that connection)."""
    server, port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(verb, "/v1/chat/completions", body=json.dumps({"messages": []}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    if verb != "HEAD":  # (a reply to HEAD has no body)
        error = json.loads(body)["error"]
        assert verb in error["message"] and error["code"] == "method_not_allowed"
    assert get(port, "/health")[0] == 200


def test_a_full_queue_answers_429_at_once(model, folders):
    server, http = start(model, folders, queue_size=1)
    port = http.server_address[1]
    try:
        body = json.dumps({"prompt": PROMPT, "max_tokens": 1500, "stream": True, "method": "ar"})
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                      f"\r\n\r\n{body}").encode())
        while b"data: " not in sock.recv(4096):
            pass
        t0 = time.perf_counter()
        status, data = post(port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
        assert status == 429 and time.perf_counter() - t0 < 5
        assert json.loads(data)["error"]["code"] == "queue_full"
        sock.close()
    finally:
        http.shutdown()
        http.server_close()
        server.close()


def test_memory_stays_flat_over_200_requests(served):
    _, port = served
    rss = {}
    for i in range(1, 201):
        body = {"prompt": f"{PROMPT} {i}", "max_tokens": 6, "method": ("pld", "lookahead")[i % 2],
                "stream": i % 3 == 0}
        assert post(port, "/v1/completions", body)[0] == 200
        if i in (20, 200):
            rss[i] = memory.rss_mb()
    assert rss[200] <= 1.10 * rss[20]


def test_redrafter_through_the_server_on_the_embedded_model():
    """The method that needs a trained head (shipped for the embedded model) over HTTP."""
    model = mlx_spec.load()
    server = Server(model, Defaults(method="redrafter", max_tokens=24))
    http = make_http_server(server, "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        expected = mlx_spec.generate(model, "Once upon a time", method="redrafter", max_tokens=24,
                                     raw=True)
        status, data = post(http.server_address[1], "/v1/completions",
                            {"prompt": "Once upon a time", "max_tokens": 24})
        reply = json.loads(data)
        assert status == 200 and reply["choices"][0]["text"] == expected.text
        assert reply["usage"]["method"] == "redrafter" and reply["usage"]["mean_accepted"] > 1.5
    finally:
        http.shutdown()
        http.server_close()
        server.close()
